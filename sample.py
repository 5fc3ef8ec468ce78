"""
Generate text from a trained model (or a Hugging Face GPT-2 directory), streamed as it is produced.

    python sample.py --start "Once upon a time"                # the newest run under out/
    python sample.py --out_dir out/shakespeare_char --start "ROMEO:" --max_new_tokens 200 --stop "\n\n"
    python sample.py --start FILE:prompt.txt --num_samples 3 --temperature 0.9 --top_p 0.95
    python sample.py --interactive                             # one prompt per line from stdin, until EOF

The num_samples samples of a prompt are generated together, as one batch. One sample streams token
by token; several are printed each as soon as it is complete (end-of-text, a stop string, or
max_new_tokens), so they appear in the order they finish.
"""

import codecs
import os
import sys
from dataclasses import dataclass, field

if __name__ == "__main__":  # Ctrl-C while torch loads exits quietly; run() gives it back its usual meaning
    __import__("configurator").quiet_interrupts()
import torch

from configurator import UserError, parse_args, run
from devices import inference_device
from loading import describe, load_model

SEPARATOR = "-" * 40
MAX_TEMPERATURE = 1e6  # logits / temperature in float32: beyond this the distribution is uniform anyway


@dataclass
class SampleConfig:
    """Generate text from a checkpoint made by train.py, or from a Hugging Face GPT-2 directory."""
    out_dir: str = "out"  # a run folder, a checkpoint file, a folder whose newest run is used, or a Hugging Face GPT-2 directory
    start: str = ""  # the prompt, or FILE:path to read it from a file; empty: start from end-of-text
    num_samples: int = 3  # samples per prompt, generated together as one batch
    max_new_tokens: int = 500  # tokens to generate per sample (fewer if end-of-text or a stop string comes first)
    temperature: float = 0.8  # 1.0: the model's distribution; lower: more conservative; 0: greedy
    top_k: int = 200  # sample only among the k most likely tokens (0: no limit)
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens whose probability reaches p (1.0: off)
    stop: list[str] = field(default_factory=list)  # end a sample at any of these strings, cut before it (\n and \t understood)
    interactive: bool = False  # read prompts from stdin, one per line, until end of input (Ctrl-D) or Ctrl-C
    seed: int = 1337  # random seed, for reproducible samples
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps
    dtype: str = "auto"  # auto (bfloat16 where the GPU has it, float32 on CPU), float32, bfloat16, float16
    no_kv_cache: bool = False  # recompute the whole context for every token instead of caching keys and values (slow)


def read_prompt(start):
    if start.startswith("FILE:"):
        path = start[len("FILE:"):]
        if not os.path.isfile(path):
            raise UserError(f"prompt file {path} not found")
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except UnicodeDecodeError as e:
            raise UserError(f"prompt file {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    return start


def encode_prompt(tokenizer, text, block_size, warn=print):
    """Prompt token ids: end-of-text for an empty prompt; the last block_size tokens of a long one."""
    ids = tokenizer.encode(text) if text else [tokenizer.eot_id]
    if len(ids) > block_size:
        warn(f"warning: the prompt has {len(ids)} tokens but the model's context is {block_size}: "
             f"keeping the last {block_size}")
        ids = ids[-block_size:]
    return ids


def unescape(s):
    """'\\n' typed on a command line -> a newline (and the other Python escapes), other text unchanged."""
    try:
        return s.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:  # a lone trailing backslash, or \x without two hex digits
        raise UserError(f"--stop {s!r}: {e.reason} (write a backslash as \\\\)") from None


class Continuation:
    """One sample's text as its tokens arrive: bytes are decoded incrementally (a BPE token can end
    inside a character), the text is cut before the first stop string, and take() releases only text
    that cannot turn out to be the start of a stop string."""

    def __init__(self, stops):
        self.stops = stops
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text, self.shown, self.done = "", 0, False

    def add(self, data, final=False):
        old = len(self.text)
        self.text += self.decoder.decode(data, final)
        # a stop string that ends in the new text starts at most len(stop) - 1 characters before it
        hits = [i for i in (self.text.find(s, max(0, old - len(s) + 1)) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
        self.done = self.done or final or bool(hits)

    def take(self):
        """The text not yet taken that is safe to print."""
        end = len(self.text)
        if not self.done:  # hold back a tail that may still grow into a stop string
            end -= max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        piece, self.shown = self.text[self.shown:end], max(self.shown, end)
        return piece


def generate(model, tokenizer, prompt_text, cfg, generator, out, stops=(), warn=print):
    """Generate cfg.num_samples continuations of one prompt as a batch and write them to `out`;
    return the samples, prompt included, in batch order."""
    prompt = encode_prompt(tokenizer, prompt_text, model.config.block_size, warn)
    head = tokenizer.decode(prompt) if prompt_text else ""  # the prompt as the model sees it (maybe cropped)
    rows = [Continuation(stops) for _ in range(cfg.num_samples)]
    stream, printed = cfg.num_samples == 1, 0

    def emit(row):  # a batch: print each sample once it is complete
        nonlocal printed
        out.write((SEPARATOR + "\n" if printed else "") + head + row.take() + "\n")
        out.flush()
        printed += 1

    if stream:
        out.write(head)
    steps = model.generate_stream([prompt] * cfg.num_samples, cfg.max_new_tokens, cfg.temperature,
                                  cfg.top_k or None, cfg.top_p, tokenizer.eot_id, not cfg.no_kv_cache, generator)
    for step in steps:
        for row, t in zip(rows, step.tolist()):
            if row.done:
                continue
            end = t < 0 or t == tokenizer.eot_id
            row.add(b"" if end else tokenizer.token_bytes([t]), final=end)
            if row.done and not stream:
                emit(row)
        if stream:
            out.write(rows[0].take())
            out.flush()
        if all(row.done for row in rows):
            break
    steps.close()
    for row in rows:  # the ones that ran to max_new_tokens
        if not row.done:
            row.add(b"", final=True)
            if not stream:
                emit(row)
    if stream:
        out.write(rows[0].take() + "\n")
        out.flush()
    return [head + row.text for row in rows]


def read_lines(inp):
    """Interactive prompts: each line of `inp` until its end."""
    while True:
        if inp.isatty():
            print("> ", end="", file=sys.stderr, flush=True)
        line = inp.readline()
        if not line:  # end of input
            return
        yield line.rstrip("\r\n")


def sample(cfg, out=None, info=None, inp=None):
    """Write cfg.num_samples samples per prompt to `out`; return them as strings (prompt included)."""
    info = info or (lambda msg: print(msg, file=sys.stderr))
    out = out or sys.stdout
    if cfg.num_samples < 1 or cfg.max_new_tokens < 0:
        raise UserError("num_samples must be at least 1 and max_new_tokens at least 0")
    if not 0 <= cfg.seed < 2**63:
        raise UserError(f"seed={cfg.seed}: must be in [0, 2**63)")
    if not (0 <= cfg.temperature <= MAX_TEMPERATURE) or not 0 < cfg.top_p <= 1 or cfg.top_k < 0:
        raise UserError(f"temperature={cfg.temperature}, top_k={cfg.top_k}, top_p={cfg.top_p}: temperature must be "
                        f"in [0, {MAX_TEMPERATURE:g}] (past it every token is equally likely), top_k >= 0 (0: no "
                        f"limit) and top_p in (0, 1] (1: off)")
    stops = [unescape(s) for s in cfg.stop]
    if "" in stops:
        raise UserError("--stop: a stop string cannot be empty")
    if cfg.interactive and cfg.start:
        raise UserError("--interactive reads the prompts from stdin: leave out --start")
    if cfg.interactive and inp is None and (sys.stdin is None or sys.stdin.closed):
        raise UserError("--interactive reads the prompts from stdin, but stdin is closed: give it a terminal or a file")
    prompts = read_lines(inp or sys.stdin) if cfg.interactive else [read_prompt(cfg.start)]
    device, ctx = inference_device(cfg.device, cfg.dtype)
    model, tokenizer, path, meta = load_model(cfg.out_dir, device, rows=cfg.num_samples, kv_cache=not cfg.no_kv_cache,
                                              what=f"sampling {cfg.num_samples:,} samples at once")
    info(f"sampling from {describe(path, meta)}")
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    texts = []
    try:
        for text in prompts:
            try:
                with ctx:
                    texts += generate(model, tokenizer, text, cfg, generator, out, stops, info)
            except UserError as e:
                if not cfg.interactive:
                    raise
                info(f"error: {e}")  # a prompt the tokenizer cannot encode: the session goes on
    except KeyboardInterrupt as e:
        if not cfg.interactive or getattr(e, "signum", 2) != 2:  # SIGTERM ends even a session: exit 143
            raise
        info("")  # Ctrl-C ends an interactive session cleanly
    return texts


def main(argv=None):
    cfg = parse_args(SampleConfig, argv, prog="sample.py")
    if sys.stdout is None or sys.stdout.closed:  # started with stdout closed (>&-): nowhere to write samples
        raise UserError("stdout is closed: there is nowhere to write the samples; redirect it to a file or a pipe")
    sample(cfg, out=sys.stdout)


if __name__ == "__main__":
    run(main)

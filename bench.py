"""
Measured speed: one subcommand per thing measured, each with its own options (--help lists them).
Every subcommand prints a readable line to stderr and one JSON line to stdout.

    python bench.py sample                    # generation: KV cache vs full recomputation, GPT-2 124M shape
    python bench.py sample --n_layer=4 --prompt_tokens=64 --new_tokens=32 --repeats=5   # a quick look

Timings exclude a short warm-up run and report the median of the timed runs.
"""

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from configurator import UserError, parse_args, run
from model import GPT, GPTConfig
from sample import inference_device


def timed(fn, repeats, device):
    """Seconds of each of `repeats` calls of fn()."""
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


@dataclass
class SampleBench:
    """Generation speed with the KV cache and with full recomputation (random weights: speed does not need trained ones)."""
    n_layer: int = 12  # model shape: GPT-2 124M by default
    n_head: int = 12  # attention heads
    n_embd: int = 768  # width
    block_size: int = 1024  # context length
    vocab_size: int = 50257  # vocabulary
    batch_size: int = 1  # sequences generated together
    prompt_tokens: int = 512  # tokens of (random) prompt
    new_tokens: int = 256  # tokens generated after it (greedy; no end-of-text)
    modes: list[str] = field(default_factory=lambda: ["cache", "recompute"])  # cache, recompute, or both (then their ratio)
    repeats: int = 3  # timed runs with the cache (median reported)
    recompute_repeats: int = 1  # timed runs of full recomputation (minutes each for 124M on a CPU)
    warmup_tokens: int = 4  # tokens of the untimed warm-up run before each mode's timed runs
    seed: int = 1337  # weights and prompt
    threads: int = 0  # CPU threads for PyTorch (0: its default, one per core)
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, mps
    dtype: str = "float32"  # float32, bfloat16, float16 (float16 on CUDA only)


def bench_sample(cfg):
    if not cfg.modes or set(cfg.modes) - {"cache", "recompute"}:
        raise UserError(f"modes={cfg.modes}: expected cache, recompute or both")
    if cfg.prompt_tokens < 1 or cfg.new_tokens < 1 or cfg.prompt_tokens + cfg.new_tokens > cfg.block_size:
        raise UserError(f"need 1 <= prompt_tokens, 1 <= new_tokens and prompt_tokens + new_tokens <= block_size "
                        f"({cfg.block_size}): both modes then see exactly the same context")
    device, ctx = inference_device(cfg.device, cfg.dtype)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                          vocab_size=cfg.vocab_size)).to(device).eval()
    prompts = torch.randint(cfg.vocab_size, (cfg.batch_size, cfg.prompt_tokens)).tolist()
    result = {"bench": "sample", **asdict(cfg), "device": device, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "params": model.get_num_params()}
    for mode in cfg.modes:
        def go(n=cfg.new_tokens):
            with ctx:
                model.generate(prompts, n, temperature=0, use_cache=mode == "cache")
        go(cfg.warmup_tokens)
        times = timed(go, cfg.repeats if mode == "cache" else cfg.recompute_repeats, device)
        seconds = statistics.median(times)
        result[mode] = {"seconds": seconds, "runs": times, "tokens_per_sec": cfg.batch_size * cfg.new_tokens / seconds}
    if len(result.keys() & {"cache", "recompute"}) == 2:
        result["speedup"] = result["recompute"]["seconds"] / result["cache"]["seconds"]
    parts = [f"{m} {result[m]['seconds']:.2f} s ({result[m]['tokens_per_sec']:.1f} tok/s)" for m in cfg.modes]
    speedup = f", KV cache {result['speedup']:.1f}x faster" if "speedup" in result else ""
    print(f"sample {cfg.new_tokens} tokens after {cfg.prompt_tokens}, {result['params'] / 1e6:.1f}M params, batch "
          f"{cfg.batch_size}, {device} {cfg.dtype}, {result['threads']} threads: {', '.join(parts)}{speedup}",
          file=sys.stderr)
    return result


COMMANDS = {"sample": (SampleBench, bench_sample)}  # train and prepare are to come


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = (f"usage: python bench.py {{{','.join(COMMANDS)}}} [--key=value ...]  "
             f"(--help after a command lists its keys)")
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return
    if not argv or argv[0] not in COMMANDS:
        raise UserError(f"{'unknown command ' + repr(argv[0]) if argv else 'no command'}; {usage}")
    cls, fn = COMMANDS[argv[0]]
    print(json.dumps(fn(parse_args(cls, argv[1:], prog=f"bench.py {argv[0]}"))))


if __name__ == "__main__":
    run(main)

"""
Generate text from a trained model, streamed as it is produced.

    python sample.py --start "Once upon a time"                # the newest run under out/
    python sample.py --out_dir out/shakespeare_char --start "ROMEO:" --max_new_tokens 200
    python sample.py --start FILE:prompt.txt --num_samples 3 --temperature 0.9 --top_p 0.95
"""

import codecs
import os
import sys
from dataclasses import dataclass

import torch

import checkpoint
import hf
from configurator import UserError, parse_args, run
from model import GPT, GPTConfig, state_dict_mismatch
from tokenizer import from_meta
from train import autocast, resolve_device, resolve_dtype


@dataclass
class SampleConfig:
    """Generate text from a checkpoint made by train.py, or from a Hugging Face GPT-2 directory."""
    out_dir: str = "out"  # a run folder, a checkpoint file, a folder whose newest run is used, or a Hugging Face GPT-2 directory
    start: str = ""  # the prompt, or FILE:path to read it from a file; empty: start from end-of-text
    num_samples: int = 3  # samples to draw, one after another
    max_new_tokens: int = 500  # tokens to generate per sample (fewer if end-of-text comes first)
    temperature: float = 0.8  # 1.0: the model's distribution; lower: more conservative; 0: greedy
    top_k: int = 200  # sample only among the k most likely tokens (0: no limit)
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens whose probability reaches p (1.0: off)
    seed: int = 1337  # random seed, for reproducible samples
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps
    dtype: str = "auto"  # auto (bfloat16 where the GPU has it, float32 on CPU), float32, bfloat16, float16
    kv_cache: bool = True  # reuse the keys and values of past tokens (False: recompute the whole context each token)


def load_model(out_dir, device):
    """(model, tokenizer, source path, info) from the checkpoint out_dir points to, or from a Hugging
    Face GPT-2 directory. info: iter_num, best_val_loss, the training config (None for an HF
    directory) and the tokenizer's meta."""
    if hf.is_hf_dir(out_dir):
        model_args, state, tokenizer_meta = hf.load_hf_gpt2(out_dir)
        if tokenizer_meta is None:
            raise UserError(f"{out_dir}: its tokenizer is not one this code has (GPT-2's BPE in vocab.json, or "
                            f"a nanogpt.json written by export.py)")
        path, ckpt = out_dir, {"model_args": model_args, "model": state, "tokenizer": tokenizer_meta}
    else:
        path = checkpoint.find(out_dir)
        ckpt = checkpoint.load(path, device)
    try:
        model = GPT(GPTConfig(**ckpt["model_args"]))
        problem = state_dict_mismatch(model.state_dict(), ckpt["model"])
        if problem:
            raise UserError(f"{path}: the weights do not match the model config saved with them: {problem}")
        model.load_state_dict(ckpt["model"])
        tokenizer = from_meta(ckpt["tokenizer"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{path} is not a checkpoint of this code, or is damaged: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:150]}") from None
    model.to(device).eval()
    return model, tokenizer, path, {"iter_num": ckpt.get("iter_num"), "best_val_loss": ckpt.get("best_val_loss"),
                                    "config": ckpt.get("config"), "tokenizer": ckpt["tokenizer"]}


def describe(path, info):
    """'PATH (step N, val loss X)' for a checkpoint; 'PATH (Hugging Face GPT-2)' for an HF directory."""
    if info["config"] is None and info["iter_num"] is None:
        return f"{path} (Hugging Face GPT-2)"
    best = info["best_val_loss"]
    return (f"{path} (step {info['iter_num']}"
            f"{f', val loss {best:.4f}' if isinstance(best, float) and best < float('inf') else ''})")


def read_prompt(start):
    if start.startswith("FILE:"):
        path = start[len("FILE:"):]
        if not os.path.isfile(path):
            raise UserError(f"prompt file {path} not found")
        with open(path, encoding="utf-8") as f:
            return f.read()
    return start


def encode_prompt(tokenizer, text, block_size, warn=print):
    """Prompt token ids: end-of-text for an empty prompt; the last block_size tokens of a long one."""
    ids = tokenizer.encode(text) if text else [tokenizer.eot_id]
    if len(ids) > block_size:
        warn(f"warning: the prompt has {len(ids)} tokens but the model's context is {block_size}: "
             f"keeping the last {block_size}")
        ids = ids[-block_size:]
    return ids


def sample(cfg, out=sys.stdout, info=None):
    """Stream cfg.num_samples samples to `out`; return them as strings (prompt included)."""
    info = info or (lambda msg: print(msg, file=sys.stderr))
    if cfg.num_samples < 1 or cfg.max_new_tokens < 0:
        raise UserError("num_samples must be at least 1 and max_new_tokens at least 0")
    if cfg.temperature < 0 or not 0 < cfg.top_p <= 1:
        raise UserError("temperature must be >= 0 and top_p in (0, 1]")
    device = resolve_device(cfg.device)
    ctx = autocast(device.split(":")[0], resolve_dtype(cfg.dtype, device.split(":")[0]))
    model, tokenizer, path, meta = load_model(cfg.out_dir, device)
    info(f"sampling from {describe(path, meta)}")
    prompt = encode_prompt(tokenizer, read_prompt(cfg.start), model.config.block_size, warn=info)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    texts = []
    for i in range(cfg.num_samples):
        text = tokenizer.decode(prompt) if cfg.start else ""
        out.write(text)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # BPE tokens can split a character
        with ctx:
            for step in model.generate_stream([prompt], cfg.max_new_tokens, cfg.temperature, cfg.top_k or None,
                                              cfg.top_p, tokenizer.eot_id, cfg.kv_cache, generator):
                t = int(step[0])
                if t < 0 or t == tokenizer.eot_id:
                    break
                piece = decoder.decode(tokenizer.token_bytes([t]))
                out.write(piece)
                out.flush()
                text += piece
        piece = decoder.decode(b"", final=True)
        out.write(piece + "\n" + ("-" * 40 + "\n" if i < cfg.num_samples - 1 else ""))
        out.flush()
        texts.append(text + piece)
    return texts


def main(argv=None):
    sample(parse_args(SampleConfig, argv, prog="sample.py"))


if __name__ == "__main__":
    run(main)

"""
A model to use, from wherever it is: a run folder (its newest best.pt or ckpt.pt), a checkpoint
file, or a Hugging Face GPT-2 directory. What sample.py, eval.py and export.py load through.

Everything read is checked before anything large is built (validate.py): the model arguments, the
tokenizer, every tensor's dtype, shape and values, and the memory the model and the requested batch
would take (faults.check_inference_memory).
"""

import torch

import checkpoint
import faults
import hf
import validate
from configurator import UserError
from model import GPT, GPTConfig
from tokenizer import from_meta

FIX = "use another checkpoint, or train or export it again"


def load_model(out_dir, device, rows=1, positions=1, kv_cache=False, what="the model"):
    """(model, tokenizer, source path, info) from the checkpoint out_dir points to, or from a Hugging
    Face GPT-2 directory. info: iter_num, best_val_loss, the training config (None for an HF
    directory) and the tokenizer's meta. rows, positions, kv_cache: the batch the caller will run, for
    the memory check (rows x positions tokens per forward, positions None: the whole context; a KV
    cache of rows full contexts)."""
    if hf.is_hf_dir(out_dir):
        model_args, state, tokenizer_meta = hf.load_hf_gpt2(out_dir)
        if tokenizer_meta is None:
            raise UserError(f"{out_dir}: its tokenizer is not one this code has (GPT-2's BPE in vocab.json, or "
                            f"a nanogpt.json written by export.py)")
        path, ckpt = out_dir, {"model_args": model_args, "model": state, "tokenizer": tokenizer_meta}
    else:
        path = checkpoint.find(out_dir)
        ckpt = checkpoint.load(path)  # its dict checked (validate.checkpoint_dict)
    args = validate.model_args(ckpt["model_args"], path, FIX)
    validate.tokenizer_meta(ckpt["tokenizer"], f"{path} tokenizer", FIX)
    config = GPTConfig(**args)
    validate.claimed_layers(args, ckpt["model"], path, FIX)  # cheap, before even the meta-device shapes
    with torch.device("meta"):  # the claimed shapes, without their memory
        shapes = GPT(config)
    vocab = ckpt["tokenizer"]["vocab_size"]
    if vocab != config.vocab_size:  # ids the tokenizer cannot decode, or ids the model never predicts
        raise UserError(f"{path}: its tokenizer has {vocab} ids but the model {config.vocab_size}: {FIX}")
    validate.tensors(ckpt["model"], shapes.state_dict(), path, FIX)
    faults.check_inference_memory(shapes, rows, positions or config.block_size, kv_cache, str(device), what)
    tokenizer = from_meta(ckpt["tokenizer"])
    try:
        model = GPT(config)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        if faults.is_out_of_memory(e):
            raise
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

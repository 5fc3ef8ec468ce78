"""
A model to use, from wherever it is: a run folder (its newest best.pt or ckpt.pt), a checkpoint
file, or a Hugging Face GPT-2 directory. What sample.py, eval.py and export.py load through.
"""

import checkpoint
import hf
from configurator import UserError
from model import GPT, GPTConfig
from tokenizer import from_meta


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
        ckpt = checkpoint.load(path)
    try:
        model = GPT(GPTConfig(**ckpt["model_args"]))
        problem = checkpoint.state_dict_mismatch(model.state_dict(), ckpt["model"])
        if problem:
            raise UserError(f"{path}: the weights do not match the model config saved with them: {problem}")
        model.load_state_dict(ckpt["model"])
        tokenizer = from_meta(ckpt["tokenizer"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
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

"""
Checkpoints: written atomically, read without running any pickled code.

out_dir/ckpt.pt   the latest state: model, optimizer, grad scaler, iteration, data loader
                  position, RNG states, config and tokenizer (everything to resume exactly)
out_dir/best.pt   the weights with the lowest val loss so far, with what sampling needs
                  (no optimizer state, so it is a third of the size)

Only tensors and plain containers go in, so torch.load(weights_only=True)
reads them: a checkpoint downloaded from the internet cannot execute code.
"""

import os
import pickle

import torch

from configurator import UserError

CKPT, BEST = "ckpt.pt", "best.pt"


def save(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a crash before this line leaves the previous checkpoint intact


def load(path, device="cpu"):
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} holds pickled Python objects, which could run code when loaded; refusing it "
                        f"({str(e).splitlines()[0][:120]})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:200]}") from None


def find(out_dir):
    """The checkpoint to sample from: out_dir itself if it is a file, else the newest run under it
    (its best.pt if it has one, else its ckpt.pt)."""
    if os.path.isfile(out_dir):
        return out_dir
    if not os.path.isdir(out_dir):
        raise UserError(f"no checkpoint: {out_dir} does not exist (train a model first, or pass --out_dir)")
    found = []
    for root, _, files in os.walk(out_dir):
        for name in (BEST, CKPT):
            if name in files:
                path = os.path.join(root, name)
                found.append((os.path.getmtime(path), name == BEST, path))
    if not found:
        raise UserError(f"no checkpoint (ckpt.pt or best.pt) under {out_dir}: train a model first, "
                        f"or pass --out_dir to a run's folder")
    newest_dir = os.path.dirname(max(found)[2])
    best = os.path.join(newest_dir, BEST)
    return best if os.path.isfile(best) else os.path.join(newest_dir, CKPT)

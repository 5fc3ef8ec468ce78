"""
Checkpoints: written atomically, read without running any pickled code.

out_dir/ckpt.pt   the latest state: model, optimizer, grad scaler, iteration, data loader
                  position, RNG states, config and tokenizer (everything to resume exactly)
out_dir/best.pt   the weights with the lowest val loss so far, with what sampling needs
                  (no optimizer state, so it is a third of the size)

Only tensors and plain containers go in, so torch.load(weights_only=True)
reads them: a checkpoint downloaded from the internet cannot execute code.
Each carries a CRC-32 of everything in it, checked at load: a file damaged
after it was written is refused, never trained on.

An out_dir holds one run at a time: train.py holds an exclusive lock on
out_dir/train.lock (with its process id in it) for as long as it runs.
"""

import errno
import os
import pickle
import re
import socket
import zlib

import torch

from configurator import UserError, os_error

CKPT, BEST, LOCK = "ckpt.pt", "best.pt", "train.lock"
NUMBERED = re.compile(r"ckpt_\d{7}\.pt")  # keep_last_n's older checkpoints: ckpt_0001000.pt
RUN_FILES = (CKPT, BEST, "metrics.jsonl", "loss.png")  # what says "a run lives here"; with NUMBERED


def numbered(name):
    return NUMBERED.fullmatch(name) is not None


def run_files(out_dir):
    """The files of a run (checkpoints, metrics, the plot) that out_dir holds."""
    if not os.path.isdir(out_dir):
        return []
    names = os.listdir(out_dir)
    return [n for n in RUN_FILES if n in names] + sorted(n for n in names if numbered(n))


def leftovers(out_dir):
    """Half-written files that a killed run of ours left: only names this program writes."""
    ours = {n + ".tmp" for n in RUN_FILES} | {"loss.png.tmp.png"}
    return sorted(n for n in os.listdir(out_dir) if n in ours)


def checksum(obj, crc=0):
    """CRC-32 of everything in a checkpoint, in a fixed order: tensors by their bytes, the rest by repr."""
    if isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            if k != "crc32":
                crc = checksum(obj[k], zlib.crc32(repr(k).encode(), crc))
        return crc
    if isinstance(obj, (list, tuple)):
        for v in obj:
            crc = checksum(v, crc)
        return crc
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        crc = zlib.crc32(f"{t.dtype}{tuple(t.shape)}".encode(), crc)
        return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc) if t.numel() else crc
    return zlib.crc32(repr(obj).encode(), crc)


def save(obj, path):
    """Write atomically: a .tmp file, fsync'ed, renamed over path. A crash or a full disk at any moment
    leaves the previous file at path intact, and no half-written file under its name."""
    obj = {**obj, "crc32": checksum(obj)}
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError from its zip writer
        if os.path.exists(tmp):
            os.remove(tmp)
        e = e if isinstance(e, OSError) else OSError(errno.ENOSPC if "space" in str(e).lower() else errno.EIO,
                                                     str(e).splitlines()[0][:200])
        kept = " (the previous one is intact)" if os.path.exists(path) else ""
        raise UserError(f"cannot write checkpoint {path}{kept}: {os_error(e)}") from None
    os.replace(tmp, path)  # the moment the new checkpoint takes the old one's place


def load(path, device="cpu"):
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} holds pickled Python objects, which could run code when loaded; refusing it "
                        f"({str(e).splitlines()[0][:120]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UserError(f"cannot read checkpoint {path} (damaged, cut short, or not a checkpoint: {why})") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise UserError(f"{path} is not a checkpoint of this program (no model weights in it)")
    if "crc32" in obj and checksum(obj) != obj["crc32"]:  # checkpoints from before the checksum have none
        raise UserError(f"{path} is damaged: its contents do not match the checksum written with it; use an older "
                        f"checkpoint (best.pt, or ckpt_NNNNNNN.pt with --keep_last_n)")
    return obj


def state_dict_mismatch(expected, state):
    """The first way `state` differs from `expected` in tensor names and shapes, or None: one line
    where load_state_dict would raise a page of them."""
    for name, t in expected.items():
        if name not in state:
            return f"{name} is missing"
        if tuple(state[name].shape) != tuple(t.shape):
            return f"{name} has shape {tuple(state[name].shape)} where the config implies {tuple(t.shape)}"
    extra = sorted(state.keys() - expected.keys())
    return f"unexpected tensor {extra[0]}" if extra else None


def lock(out_dir):
    """Hold out_dir for this run: the returned open file keeps an exclusive lock until it is closed (or
    the process dies, even by kill -9). A second run on the same out_dir gets a one-line error naming us."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        return None
    f = open(os.path.join(out_dir, LOCK), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise UserError(f"{out_dir} is in use by another run (process {holder}): wait for it to end, stop it, "
                        f"or choose another --out_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


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

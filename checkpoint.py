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

import os
import pickle
import re
import zlib

import torch

import safeio
import validate
from configurator import UserError, os_error
from shards import hold_lock

CKPT, BEST, LOCK = "ckpt.pt", "best.pt", "train.lock"
NUMBERED = re.compile(r"ckpt_\d{7}\.pt")  # keep_last_n's older checkpoints: ckpt_0001000.pt
# FSDP's sharded checkpoints: ckpt.pt holds everything but the weights and the optimizer state, which
# every process writes its own part of (torch.distributed.checkpoint) into the folder ckpt.pt names
SHARDS = re.compile(r"shards_\d{7}\.\d+")
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
    """Write atomically (safeio.atomic_write: a .tmp file, fsync'ed, renamed over path). A crash or a full
    disk at any moment leaves the previous file at path intact, and no half-written file under its name."""
    obj = {**obj, "crc32": checksum(obj)}
    try:
        safeio.atomic_write(path, lambda f: torch.save(obj, f))  # torch's "unexpected pos" is the OSError behind it
    except OSError as e:
        kept = " (the previous one is intact)" if os.path.exists(path) else " (no checkpoint was written under that name)"
        raise UserError(f"cannot write checkpoint {path}{kept}: {os_error(e)}") from None


def load(path, shards=("model",)):
    """A checkpoint, read into CPU memory (where its checksum is computed) and checked; whoever loads it
    into a model copies the tensors to the model's device. A sharded checkpoint's `shards` (model,
    optimizer) are read whole into this process, as if they had been saved in the file; shards=() leaves
    them on disk for the processes that load their own parts (distributed.load_sharded)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} holds pickled Python objects, which could run code when loaded; refusing it "
                        f"({str(e).splitlines()[0][:120]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UserError(f"cannot read checkpoint {path} (damaged, cut short, or not a checkpoint: {why})") from None
    if not isinstance(obj, dict) or ("model" not in obj and "sharded" not in obj):
        raise UserError(f"{path} is not a checkpoint of this program (no model weights in it)")
    validate.storage_bytes(obj, path)  # before the checksum, which would materialize what the tensors claim
    if "crc32" in obj and checksum(obj) != obj["crc32"]:  # checkpoints from before the checksum have none
        raise UserError(f"{path} is damaged: its contents do not match the checksum written with it; use an older "
                        f"checkpoint (best.pt, or ckpt_NNNNNNN.pt with --keep_last_n)")
    if "sharded" in obj and shards:
        obj.update(read_shards(shards_dir(path, obj), shards))
    if "model" not in obj:  # a sharded checkpoint whose parts its processes read themselves: check the rest
        validate.checkpoint_dict({**obj, "model": {}}, path)
        return obj
    return validate.checkpoint_dict(obj, path)


def shards_dir(path, ckpt):
    """The folder of a sharded checkpoint's tensors, beside its ckpt.pt."""
    name = ckpt["sharded"]
    if not isinstance(name, str) or not SHARDS.fullmatch(name):
        raise UserError(f"{path}: its 'sharded' entry {name!r} is not a shards folder this program writes")
    folder = os.path.join(os.path.dirname(path), name)
    if not os.path.isfile(os.path.join(folder, ".metadata")):
        raise UserError(f"{path} names the sharded state {folder}, which is missing or incomplete: use an older "
                        f"checkpoint (ckpt_NNNNNNN.pt with --keep_last_n, or best.pt for the weights)")
    check_shards_metadata(folder)
    return folder


class _MetadataUnpickler(pickle.Unpickler):
    """torch.distributed.checkpoint reads its .metadata with pickle.load, which would run whatever code a
    crafted file names: unpickled here first, with only the classes DCP writes there allowed."""

    def find_class(self, module, name):
        allowed = ((module.startswith("torch.distributed.checkpoint.") and isinstance(getattr(
                        __import__(module, fromlist=[name]), name, None), type))
                   or (module, name) in {("torch", "Size"), ("torch.serialization", "_get_layout"),
                                         ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
                                         ("collections", "OrderedDict")}
                   or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)))
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not something a sharded checkpoint holds")
        return super().find_class(module, name)


def check_shards_metadata(folder):
    """Refuse a shards folder whose .metadata would run code when torch.distributed.checkpoint reads it."""
    path = os.path.join(folder, ".metadata")
    try:
        with open(path, "rb") as f:
            _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} holds pickled Python objects other than a checkpoint's index, which could run "
                        f"code when loaded; refusing it ({str(e).splitlines()[0][:120]})") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise UserError(f"cannot read {path} (damaged, cut short, or not a sharded checkpoint's index: "
                        f"{type(e).__name__})") from None


def read_shards(folder, keys):
    """{key: state} of a sharded checkpoint, read whole into this one process (no process group needed)."""
    import warnings

    from torch.distributed.checkpoint import FileSystemReader

    from distributed import checkpoint_io
    state = {}

    def read():
        nonlocal state
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no process group: loading on one process", which is the point
            try:  # what torch.distributed.checkpoint.format_utils.dcp_to_torch_save does, without the file
                from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
                from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
            except ImportError:  # another PyTorch: the public conversion, through a file
                import tempfile

                from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
                with tempfile.TemporaryDirectory(dir=folder) as tmp:
                    dcp_to_torch_save(folder, os.path.join(tmp, "whole.pt"))
                    state = torch.load(os.path.join(tmp, "whole.pt"), map_location="cpu", weights_only=True)
            else:
                _load_state_dict(state, storage_reader=FileSystemReader(folder),
                                 planner=_EmptyStateDictLoadPlanner(keys=set(keys)), no_dist=True)
    try:  # DCP wraps a reader's failure in its CheckpointException, a BaseException: checkpoint_io makes it one line
        checkpoint_io(read, "read", folder, "damaged or incomplete: use an older checkpoint, ckpt_NNNNNNN.pt with "
                      "--keep_last_n, or best.pt for the weights")
    except Exception as e:  # what fails outside DCP's own wrapping
        raise UserError(f"cannot read the sharded checkpoint {folder} (damaged or incomplete: "
                        f"{str(e).strip().splitlines()[0][:150] if str(e).strip() else type(e).__name__})") from None
    return {k: state[k] for k in keys if k in state}


def referenced_shards(out_dir):
    """The shards folders that ckpt.pt or a numbered checkpoint in out_dir names: those a new save keeps."""
    keep = set()
    for name in [CKPT] + [n for n in os.listdir(out_dir) if numbered(n)]:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors not read
            except Exception:
                continue
            if isinstance(ckpt, dict) and isinstance(ckpt.get("sharded"), str):
                keep.add(ckpt["sharded"])
    return keep


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
    """Hold out_dir for this run (see shards.hold_lock): a second run on it gets one line naming us."""
    return hold_lock(os.path.join(out_dir, LOCK), lambda holder: (
        f"{out_dir} is in use by another run (process {holder}): wait for it to end, stop it, or choose another "
        f"--out_dir"))


def claim(out_dir, resuming, auto=False):
    """Take out_dir for a run: the lock first (one run per out_dir), then refuse to start a new run over
    an old one's files, then clear what a killed run of ours left half-written. Returns the lock.
    auto (init_from=auto, which found no ckpt.pt): a metrics.jsonl with nothing past step 0 is what a
    restarted run of ours left when it died before its first checkpoint, and starting anew loses nothing."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create out_dir {out_dir}: {e.strerror} (choose another --out_dir)") from None
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"out_dir {out_dir} is not writable (choose another --out_dir)")
    held = lock(out_dir)
    found = run_files(out_dir)
    if auto and found == ["metrics.jsonl"] and _nothing_past_step_0(os.path.join(out_dir, "metrics.jsonl")):
        found = []
    if not resuming and found:
        if held is not None:
            held.close()
        how = ("continue it with --init_from=resume" if CKPT in found else
               "it has no ckpt.pt to resume from: move those files away")
        raise UserError(f"{out_dir} already holds a run's {', '.join(found)}: {how}, or choose another --out_dir "
                        f"(nothing was overwritten)")
    for name in leftovers(out_dir):
        os.remove(os.path.join(out_dir, name))
    return held


def _nothing_past_step_0(path):
    import json
    try:
        with open(path) as f:
            return all(json.loads(line).get("iter", 0) == 0 for line in f if line.strip())
    except (OSError, ValueError, AttributeError):
        return False


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

"""
Where a command runs and at what precision: the device and dtype options every command shares
(train.py, sample.py, eval.py, bench.py), and the autocast context that goes with them.
"""

from contextlib import nullcontext

import torch

from configurator import UserError


def resolve_device(device):
    """The device a command runs on: auto picks cuda, then mps, then cpu; one that is not here is a UserError.
    cuda:N also becomes the current CUDA device, so that what names no device (torch.cuda.synchronize(),
    is_bf16_supported(), memory queries, a plain .cuda()) acts on that GPU, not on cuda:0."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device}, but this PyTorch sees no CUDA GPU: use --device=cpu (or auto)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={device}, but MPS is not available here: use --device=cpu (or auto)")
    if kind not in ("cpu", "cuda", "mps"):
        raise UserError(f"device={device!r}: expected auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and device != "cuda":
        index = device.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise UserError(f"device={device}: this machine has CUDA devices 0 to {torch.cuda.device_count() - 1}")
        torch.cuda.set_device(int(index))
    return device


def resolve_dtype(dtype, device_type):
    """The precision: auto is bfloat16 where the GPU has it, else float16 on CUDA, float32 elsewhere."""
    if dtype == "auto":
        if device_type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"dtype={dtype!r}: expected auto, float32, bfloat16 or float16")
    if dtype == "float16" and device_type != "cuda":
        raise UserError("dtype=float16 needs a CUDA GPU (its loss scaling is CUDA-only): use bfloat16 or float32")
    return dtype


def autocast(device_type, dtype):
    """The mixed-precision context for a resolved dtype (none for float32)."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


def inference_device(device, dtype):
    """(device, autocast context) for the device and dtype options of an inference command."""
    device = resolve_device(device)
    device_type = device.split(":")[0]
    return device, autocast(device_type, resolve_dtype(dtype, device_type))

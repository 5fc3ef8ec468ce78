"""
What goes wrong in a training run, and what train.py does about it, in one place:

- bad steps: a non-finite loss or gradient, or a loss spike, is skipped (BadSteps); too many in a row
  roll the run back to its last checkpoint (Trainer.rollback), and healthy() decides when a rolled-back
  run may save again;
- stop requests: SIGTERM or Ctrl-C finish the current step or eval batch, save, and exit (StopRequest);
- memory: an estimate checked before the model is built, and out-of-memory errors turned into advice.

The out_dir lock and the checksums of checkpoints live in checkpoint.py.
"""

import math
import signal
import sys
from collections import deque

import torch

from configurator import Interrupted, UserError

MAX_ROLLBACKS = 5  # a run still failing after this many rollbacks stops, its last good checkpoint intact


class BadSteps:
    """Decides which steps to skip: a non-finite loss or gradient, or a loss far above the recent
    ones (robust z-score against the median and median absolute deviation of the last 100 steps)."""

    def __init__(self, threshold, losses=()):
        self.threshold = threshold
        self.recent = deque(losses, maxlen=100)

    def check(self, loss, grad_norm, scaler_on):
        if not math.isfinite(loss):
            return "non-finite loss"
        if not math.isfinite(grad_norm) and not scaler_on:  # with fp16 the grad scaler handles overflows
            return "non-finite gradient"
        if self.threshold > 0 and len(self.recent) >= 20:
            ordered = sorted(self.recent)
            median = ordered[len(ordered) // 2]
            mad = sorted(abs(x - median) for x in ordered)[len(ordered) // 2] * 1.4826  # ~ a standard deviation
            if loss > median + self.threshold * max(mad, 0.01 * median):
                return f"loss spike: {loss:.4f} against a recent median of {median:.4f}"
        self.recent.append(loss)
        return None


class Diverged(UserError):
    """The model's outputs (or weights) are not finite: in training, a reason to roll back like a bad
    eval; anywhere else, one line."""


def check_finite_model(model):
    """Diverged when a weight is NaN or infinite (one pass over the weights, far cheaper than an eval)."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise Diverged(f"the model's weights are not finite ({name})")


def healthy(val_loss, recover_to):
    """Whether a checkpoint with this val loss may be saved: a finite loss, and after a rollback, back to
    (within 1% of) recover_to, the val loss of the checkpoint rolled back to."""
    if not math.isfinite(val_loss):
        return False
    return recover_to is None or val_loss <= recover_to * 1.01


class StopRequest:
    """SIGTERM and SIGINT while training: remember the signal and let the loop finish the step (or the
    eval batch) and save; a second one stops at once. Used as a context manager around the loop, which
    puts the previous handlers back."""

    def __init__(self, announce=True):
        self.signum, self.announce = None, announce

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def on_signal(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now, with that signal's exit code
            raise Interrupted(signum)
        self.signum = signum
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (again to stop at once)",
                  flush=True)


# ---------------------------------------------------------------------------------------------
# memory

def keep_freed_memory():
    """Have glibc keep freed memory for reuse instead of returning it to the OS. Big tensors (a step's
    logits: batch x context x vocab floats) are otherwise mmap'ed fresh every step and every page
    faulted in again: on a CPU with GPT-2's vocabulary that cost a third of the step time (docs/benchmarks.md)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to do
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    libc.mallopt(M_MMAP_MAX, 0)  # big blocks come from the heap...
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # ...which keeps what is freed


def available_memory(device):
    """Free bytes on the device (CUDA), or the memory Linux says is available (CPU); None if unknown."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


def out_of_memory_advice(cfg, need=None, have=None):
    amounts = f" (it needs about {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB are free)" if need and have else ""
    return (f"out of memory{amounts}: lower --batch_size={cfg.batch_size} and raise --gradient_accumulation_steps to "
            f"keep the tokens per step, or turn on --gradient_checkpointing=True, or shorten --block_size")


def is_out_of_memory(e):
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)


def inference_memory(model_shapes, rows, positions, kv_cache):
    """Rough peak bytes of inference (sample.py, eval.py) without gradients: fp32 weights twice (the
    checkpoint's copy and the model's), the KV cache of `rows` sequences of the full context, and per
    forward the activations and logits (with their softmax) of rows x positions tokens."""
    c = model_shapes.config
    params = sum(p.numel() for p in model_shapes.parameters())
    tokens = rows * positions
    cache = 2 * c.n_layer * rows * c.block_size * c.n_embd * 4 if kv_cache else 0
    return 8 * params + cache + tokens * (16 * c.n_embd * 4 + 12 * model_shapes.lm_head.weight.shape[0])


def check_inference_memory(model_shapes, rows, positions, kv_cache, device, what):
    """Refuse (CPU) or warn about (GPU) an inference whose estimate does not fit, before the model is
    built: a checkpoint's claimed shapes and the requested batch decide it, not what the kernel allows."""
    refuse_or_warn(inference_memory(model_shapes, rows, positions, kv_cache), device, lambda need, have: (
        f"out of memory: {what} needs about {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB are free; ask for "
        f"fewer rows at once (--num_samples, --batch_size) or use a smaller model"),
        lambda msg: print(f"warning: {msg}", file=sys.stderr))


def refuse_or_warn(need, device, advice, warn):
    """The memory policy of every command: an estimate of `need` bytes over what the device has free is
    refused on a CPU (past it, Linux kills the process without a word) and a warning on a GPU (whose
    allocator and the estimate's roughness leave room). advice(need, have): the line."""
    have = available_memory(device)
    if have is not None and need > have:
        if device.startswith("cpu"):
            raise UserError(advice(need, have))
        warn(advice(need, have))


def check_memory(model_shapes, cfg, dtype, device, warn):
    """Refuse (CPU) or warn about (GPU) a run whose estimated peak does not fit. model_shapes: the GPT on
    the meta device, so that a model too big for the machine is never built."""
    need = model_shapes.estimate_memory(cfg.batch_size, 4 if dtype == "float32" else 2, cfg.gradient_checkpointing)
    refuse_or_warn(need, device, lambda need, have: out_of_memory_advice(cfg, need, have),
                   lambda msg: warn(f"warning: the estimate says this may not fit: {msg}"))

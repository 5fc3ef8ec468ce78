"""
What a run reports: metrics.jsonl (one JSON object per log line or eval), the same events in
Weights & Biases when asked, and loss.png, a loss curve refreshed at every eval, because people
would rather look at a curve than read numbers. And MFU, the share of the GPU's peak a run
achieves, which train.py logs and bench.py reports; and a run's time, estimated before its first step,
so that a GPU recipe started on a CPU says so at once.
"""

import html
import json
import os
import re
import sys
import time

import torch

from configurator import UserError


def read_events(path):
    """The events in a metrics.jsonl; a line cut short by a crash, or one that is not an event (an object
    with a numeric iter, as every line this code writes), is skipped: the file is the user's to edit."""
    events = []
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(event, dict) and isinstance(event.get("iter", 0), (int, float)):
                    events.append(event)
    return events


class Metrics:

    def __init__(self, out_dir, resume_iter=None, wandb_config=None):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.png = os.path.join(out_dir, "loss.png")
        # a resumed run redoes the steps after its checkpoint: drop what the old run logged for them
        kept = [e for e in read_events(self.path) if e.get("iter", 0) <= resume_iter] if resume_iter is not None else []
        import safeio  # the one writer: temp file (never through a symlink), fsync, rename
        safeio.write_text(self.path, "".join(json.dumps(e) + "\n" for e in kept))
        self.f = open(self.path, "a")
        self.wandb = init_wandb(wandb_config, out_dir) if wandb_config is not None else None

    def log(self, event):
        self.f.write(json.dumps(event) + "\n")
        self.f.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in event.items() if k != "iter" and isinstance(v, (int, float))},
                           step=event["iter"])

    def log_sample(self, it, text):
        if self.wandb is not None:
            import wandb
            self.wandb.log({"sample": wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=it)

    def plot(self):
        if self.png is None:
            return
        try:
            plot_losses(read_events(self.path), self.png)
        except ImportError:
            print("warning: matplotlib is not installed, so there is no loss.png (pip install matplotlib)",
                  file=sys.stderr)
            self.png = None

    def close(self):
        self.f.close()
        if self.wandb is not None:
            self.wandb.finish()


def init_wandb(config, out_dir):
    import wandb
    try:
        return wandb.init(project=config["wandb_project"], name=config["wandb_run_name"], config=config, dir=out_dir)
    except Exception as e:
        raise UserError(f"wandb.init failed ({type(e).__name__}: {str(e).splitlines()[0][:150]}): run `wandb login`, "
                        f"or set WANDB_MODE=offline to log locally") from None


def plot_losses(events, path):
    """Training loss per logged step and train/val loss per eval, against tokens seen."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    steps = [e for e in events if "loss" in e and "tokens" in e]
    evals = [e for e in events if "val_loss" in e and "tokens" in e]
    fig, ax = plt.subplots(figsize=(8, 5))
    if steps:
        ax.plot([e["tokens"] for e in steps], [e["loss"] for e in steps], color="tab:blue", alpha=0.35,
                linewidth=1, label="train (step)")
    for key, color in (("train_loss", "tab:blue"), ("val_loss", "tab:orange")):
        if evals:
            ax.plot([e["tokens"] for e in evals], [e[key] for e in evals], "o-", color=color, markersize=3,
                    label=key.replace("_loss", " (eval)"))
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss")
    if evals:
        best = min(evals, key=lambda e: e["val_loss"])
        ax.set_title(f"best val loss {best['val_loss']:.4f} at step {best['iter']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    import safeio
    try:  # through the one writer: a fresh temp file (never through a symlink), then renamed over path
        safeio.atomic_write(path, lambda f: fig.savefig(f, dpi=100, format="png"), tmp_suffix=".tmp.png",
                            fsync=False)
    finally:
        plt.close(fig)


class Progress:
    """The progress of a long loop (eval.py's scoring, train.py's evals, HellaSwag) on stderr: a tqdm bar
    on a terminal, once the loop has taken `delay` seconds; where stderr is not a terminal (nohup, a
    pipe, a log file) a plain line at most every INTERVAL seconds instead, so that a long eval does not
    look hung and the log holds no bar characters. A loop shorter than that prints nothing."""

    INTERVAL = 30.0  # seconds between plain lines

    def __init__(self, total, desc, unit, enabled=True, delay=2.0, unit_scale=False, file=None):
        self.total, self.desc, self.unit, self.enabled, self.n = total, desc, unit, enabled, 0
        self.file = file or sys.stderr
        self.bar = None
        if enabled and self.file.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=False, delay=delay,
                            file=self.file)
        self.t0 = self.last = time.monotonic()

    def update(self, n=1):
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (now := time.monotonic()) - self.last >= self.INTERVAL:
            self.last = now
            share = f" ({self.n / self.total:.0%})" if self.total else ""
            print(f"{self.desc}: {self.n:,} of {self.total:,} {self.unit}{share}, {now - self.t0:.0f} s",
                  file=self.file, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Dense bf16 tensor peaks per device, FLOP/s, from the vendors' datasheets; "dense" is half the
# figure the datasheets print "with sparsity". fp16 where a device has no bf16 (V100, T4: their fp16
# tensor peak, which is what autocast then runs). The sources, by line:
#   nvidia.com/en-us/data-center/{h100,h200,l40,l40s,l4,a10,a30,a40,v100,t4}/ and .../a100/ (datasheets);
#   H800 and H20: NVIDIA's China-market specification sheets (H20: 148 dense);
#   B200 and GB200: the HGX B200 and GB200 NVL72 pages (36 and 360 PFLOPS sparse for 8 and 72 GPUs);
#   RTX 4090 and 3090: the Ada and Ampere GA102 whitepapers (fp16 tensor with fp32 accumulate, as bf16);
#   amd.com Instinct MI300X, MI325X, MI250X pages. An MI250X is two devices to PyTorch (two dies), each
#   half the card's 383: 191.5.
# A key matches whole words of the name CUDA reports, case aside ("NVIDIA L40" is an L40, not an L4;
# "NVIDIA A100-SXM4-80GB" an A100, not an A10), and the key of most words wins: H100 SXM is
# "NVIDIA H100 80GB HBM3", the PCIe card "NVIDIA H100 PCIe" (lower clocks and power: 756 against 989),
# NVL "NVIDIA H100 NVL". A name no key matches has no MFU (null), rather than a wrong one.
PEAK_FLOPS = {
    "H100": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12, "H200 NVL": 835e12,
    "H800": 989e12, "H800 PCIe": 756e12, "GH200": 989e12, "H20": 148e12,
    "B200": 2250e12, "GB200": 2500e12,
    "A100": 312e12, "A800": 312e12, "A10": 125e12, "A30": 165e12, "A40": 149.7e12,
    "L4": 121e12, "L40": 181e12, "L40S": 362e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12,
    "V100": 125e12, "V100 PCIE": 112e12, "V100S": 130e12, "T4": 65e12,
    "MI300X": 1307e12, "MI325X": 1307e12, "MI250X": 191.5e12,
}


def _words(name):
    return re.findall(r"[a-z0-9]+", name.lower())


def peak_key(name):
    """The PEAK_FLOPS key a GPU name (as torch.cuda.get_device_name gives it) matches, or None: the key
    whose words appear, whole and in order, in the name; of several, the one of most words."""
    words, best = _words(name), None
    for key in PEAK_FLOPS:
        k = _words(key)
        if any(words[i:i + len(k)] == k for i in range(len(words) - len(k) + 1)):
            if best is None or len(k) > len(_words(best)):
                best = key
    return best


def peak_flops(device, name=None):
    """The device's dense bf16 peak in FLOP/s, or None when unknown (and always on CPU). name: a GPU
    name as torch.cuda.get_device_name gives it, instead of asking the device."""
    if name is None:
        if torch.device(device).type != "cuda":
            return None
        name = torch.cuda.get_device_name(device)
    key = peak_key(name)
    return None if key is None else PEAK_FLOPS[key]


def estimate_mfu(flops_per_token, tokens_per_sec, device):
    """Model FLOPs utilization: achieved training FLOP/s over the device's dense bf16 peak; None where
    unknown. The FLOPs are GPT.flops_per_token's (6N + 12 L C T, PaLM's formula), whatever the dtype."""
    peak = peak_flops(device)
    return None if peak is None else flops_per_token * tokens_per_sec / peak


# ---------------------------------------------------------------------------------------------
# a run's time, before its first step (train.py): a GPU recipe started on a CPU says so at once

DAY = 86400
SLOWEST_FLOPS_PER_SEC = 1e10  # no machine worth probing is slower: under a day's worth of this, no probe, no warning
CPU_QUICK_START = ("python train.py config/shakespeare_char.py --device=cpu --compile=False --eval_iters=20 "
                   "--log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 "
                   "--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0")  # the README's, minutes on a laptop


def run_flops(cfg, flops_per_token, start_iter=0):
    """(FLOPs, steps, evals) of what is left of a train.py run: the steps, and the evals (forward
    only: a third of a training step's FLOPs per token) of eval_iters batches on each split."""
    steps = 0 if cfg.eval_only else max(cfg.max_iters - start_iter, 0)
    evals = steps // cfg.eval_interval + 1
    step_tokens = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    eval_tokens = 2 * cfg.eval_iters * cfg.batch_size * cfg.block_size
    return flops_per_token * (steps * step_tokens + evals * eval_tokens / 3), steps, evals


def matmul_flops_per_sec(device, dtype="float32", n=2048, seconds=0.2):
    """FLOP/s of an n x n matrix product on the device: about what a training step reaches on a CPU,
    and more than it does on a GPU. Its own generator: the run's random state is not touched."""
    kind = torch.device(device).type
    sync = {"cuda": torch.cuda.synchronize, "mps": lambda: torch.mps.synchronize()}.get(kind, lambda: None)
    g = torch.Generator(device).manual_seed(0)
    a, b = (torch.rand(n, n, generator=g, device=device).to(getattr(torch, dtype)) for _ in range(2))
    a @ b  # warm-up: thread pools, cuBLAS
    sync()
    reps, t0 = 0, time.perf_counter()
    while reps == 0 or time.perf_counter() - t0 < seconds:
        for _ in range(1 if kind == "cpu" else 20):  # a GPU: fewer syncs
            a @ b
            reps += 1
        sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def slow_run_warning(cfg, flops_per_token, params, device, dtype="float32", start_iter=0, world=1,
                     probe=matmul_flops_per_sec):
    """One line when the run would take more than a day here, with what to run instead; else None.
    Not an error: the user may mean it."""
    flops, steps, evals = run_flops(cfg, flops_per_token, start_iter)
    if flops < DAY * SLOWEST_FLOPS_PER_SEC * world:
        return None  # every small run, and every test, ends here without a probe
    speed = probe(device, dtype) * world
    seconds = flops / speed
    if seconds <= DAY:
        return None
    if device.startswith("cuda"):
        fits = max(1, int(steps * DAY / seconds))
        instead = (f"Fewer steps fit a day (--max_iters={start_iter + fits} --lr_decay_iters={start_iter + fits}), or "
                   f"plan a model for a day: python plan.py --hours 24 --tokens_per_sec {speed / flops_per_token:.3g} --measured_params {params:.3g}")
    else:
        instead = f"On this machine, train the README's CPU quick start instead: {CPU_QUICK_START}"
    return (f"warning: this run needs about {seconds / DAY:.1f} days on {device}: {flops:.2g} FLOPs ({steps:,} steps, "
            f"{evals:,} evals) at the {speed:.2g} FLOP/s a {dtype} matrix product reaches here. {instead}")

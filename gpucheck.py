"""The checks of a GPU session that the CPU tests can only stand in for (docs/benchmarks.md, "GPU: how
to measure"). `python bench.py gpu` runs each in a process of its own, with a timeout, beside the speed
runs; `python bench.py check --name=NAME` runs one. A check runs the commands as a user types them
(prepare.py, train.py, sample.py, eval.py, torchrun) in a scratch folder of its own, removed at the end,
and returns its figures and its failures (an empty list: it passed). --quick runs the same commands at
a toy shape on any device: the plumbing, which the CPU suite checks."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
CHAR_TARGET = 1.47  # config/shakespeare_char.py: nanoGPT's val 1.4697 in about 3 minutes on an A100
RESUME_TOLERANCE = 0.02  # bf16 autocast and CUDA's atomics (embedding backward): losses agree to about 1e-2


class Check:
    """A scratch folder, the commands run in it, and the failures found."""

    def __init__(self, device, quick, work_dir=None):
        self.device, self.quick = device, quick
        self.dir = tempfile.mkdtemp(prefix="nanogpt-gpucheck-", dir=work_dir)
        self.failures = []
        self.prepared = False

    def path(self, *names):
        return os.path.join(self.dir, *names)

    def command(self, argv, env=None, what=None):
        """Run argv in the repository; its output goes to stderr as it comes (the sweep's log) and is
        returned with the exit code. With `what`, a non-zero exit is a failure of that name."""
        print(f"$ {' '.join(argv)}", file=sys.stderr, flush=True)
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        lines = []
        for line in proc.stdout:
            sys.stderr.write(line)
            lines.append(line)
        sys.stderr.flush()
        code, out = proc.wait(), "".join(lines)
        if what and code != 0:
            self.fail(f"{what}: exit {code}: {last_line(out)}")
        return code, out

    def python(self, script, *args, env=None, what=None):
        """python SCRIPT ARGS; a non-zero exit is a failure named `what` (the script by default)."""
        return self.command([sys.executable, script, *args], env=env, what=what or script)

    def torchrun(self, *args, env=None, what="torchrun"):
        """torchrun --standalone --nproc_per_node=1 train.py ARGS."""
        return self.command([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                             "train.py", *args], env=env, what=what)

    def fail(self, message):
        print(f"FAILED: {message}", file=sys.stderr, flush=True)
        self.failures.append(message[:300])

    def char_data(self):
        """train.py's arguments for data/shakespeare_char under the scratch folder (prepared once, from the
        text the repository carries) on the check's device, with no plot and no wandb."""
        if not self.prepared:
            self.python("prepare.py", "--input", os.path.join("assets", "tinyshakespeare.txt"), "--tokenizer=char",
                        "--name=shakespeare_char", f"--data_root={self.path('data')}", "--num_proc=1")
            self.prepared = True
        return [f"--data_root={self.path('data')}", f"--device={self.device}", "--plot=False", "--wandb_log=False"]

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def last_line(out):
    lines = [line for line in out.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def events(out_dir):
    from metrics import read_events
    return read_events(os.path.join(out_dir, "metrics.jsonl"))


def losses_by_iter(out_dir):
    """{iter: training loss} and {iter: val loss} of a run's metrics.jsonl."""
    evs = events(out_dir)
    return ({e["iter"]: e["loss"] for e in evs if "loss" in e and "skipped" not in e},
            {e["iter"]: e["val_loss"] for e in evs if "val_loss" in e})


def max_difference(a, b, iters):
    """The largest |a - b| over iters present in both (None if none is, or one is not finite)."""
    common = [i for i in iters if i in a and i in b]
    if not common:
        return None
    diffs = [abs(a[i] - b[i]) for i in common]
    return max(diffs) if all(math.isfinite(d) for d in diffs) else math.inf


# ---------------------------------------------------------------------------------------------
# the checks: each takes a Check and returns its figures

def char_speed(c, config, iters):
    """config/shakespeare_char*.py to its target over `iters` steps: the val-loss curve against time,
    and when it first reaches CHAR_TARGET (interpolated between evals; 'time' counts from the first
    step, compile and evals included)."""
    import statistics
    from bench import first_reach
    out = c.path("run")
    iters = 20 if c.quick else iters
    args = [config, *c.char_data(), f"--out_dir={out}", f"--max_iters={iters}", f"--lr_decay_iters={iters}",
            "--sample_tokens=0", "--log_interval=50"]
    if c.quick:
        args += ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
                 "--eval_interval=10", "--eval_iters=2", "--warmup_iters=2"]
    t = time.time()
    code, _ = c.python("train.py", *args)
    wall = time.time() - t
    logged = events(out)
    evals = [{k: e[k] for k in ("iter", "time", "val_loss")} for e in logged if "val_loss" in e]
    speeds = [e["tokens_per_sec"] for e in logged if "tokens_per_sec" in e]
    reach = first_reach(evals, CHAR_TARGET)
    if code == 0 and not evals:
        c.fail("no eval in metrics.jsonl")
    return {"config": config, "max_iters": iters, "target": CHAR_TARGET, "evals": evals,
            "best_val": min((e["val_loss"] for e in evals), default=None),
            "reached_at": None if reach is None else {"iter": round(reach[0]), "seconds": round(reach[1], 1)},
            "tokens_per_sec_median": statistics.median(speeds) if speeds else None,
            "process_seconds": round(wall, 1)}


def check_char_modern(c):
    return char_speed(c, "config/shakespeare_char_modern.py", 3000)


def check_char_classic(c):
    return char_speed(c, "config/shakespeare_char.py", 5000)  # nanoGPT's schedule


def small_char(c, out, **keys):
    """A small character model (dropout on: the CUDA random state must survive a resume too)."""
    shape = dict(n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=32, eval_iters=10, eval_interval=20,
                 max_iters=40, lr_decay_iters=40, warmup_iters=5)
    if c.quick:
        shape.update(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, eval_iters=2, eval_interval=4,
                     max_iters=8, lr_decay_iters=8, warmup_iters=2)
    shape.update(dropout=0.1, compile=False, log_interval=1, sample_tokens=0, always_save_checkpoint=True)
    shape.update(keys)
    return ["config/shakespeare_char.py", *c.char_data(), f"--out_dir={out}"] + [f"--{k}={v}" for k, v in shape.items()]


def check_cuda_paths(c):
    """Resume on the device equal to an uninterrupted run; a float16 resume from that (bf16) checkpoint;
    sample.py and eval.py on the device, from the same checkpoint."""
    n = 8 if c.quick else 40
    whole, split = c.path("whole"), c.path("split")
    result = {}
    c.python("train.py", *small_char(c, whole), what="uninterrupted run")
    c.python("train.py", *small_char(c, split, max_iters=n // 2), what="first half")
    c.python("train.py", *small_char(c, split, init_from="resume"), what="resume")
    (train_a, val_a), (train_b, val_b) = losses_by_iter(whole), losses_by_iter(split)
    result["resume_max_train_loss_difference"] = d_train = max_difference(train_a, train_b, range(n // 2 + 1, n + 1))
    result["resume_val_loss_difference"] = d_val = max_difference(val_a, val_b, [n])
    if d_train is None or d_val is None or max(d_train, d_val) > RESUME_TOLERANCE:
        c.fail(f"resume: training losses differ by {d_train}, the final val loss by {d_val} "
               f"(tolerance {RESUME_TOLERANCE}) from the uninterrupted run")
    dtype = "float32" if c.device == "cpu" else "float16"  # float16 needs a GPU (its grad scaler)
    code, _ = c.python("train.py", *small_char(c, split, init_from="resume", max_iters=n + 4, dtype=dtype),
                       what=f"resume in {dtype}")
    f16 = losses_by_iter(split)[0]
    result["float16_resume_losses"] = [f16.get(i) for i in range(n + 1, n + 5)]
    if code == 0 and not all(isinstance(x, float) and math.isfinite(x) for x in result["float16_resume_losses"]):
        c.fail(f"resume in {dtype}: losses {result['float16_resume_losses']}")
    code, out = c.python("sample.py", f"--out_dir={split}", f"--device={c.device}", "--num_samples=2",
                         "--max_new_tokens=64", "--start=ROMEO:")
    result["sample_chars"] = len(out) if code == 0 else None
    code, out = c.python("eval.py", f"--out_dir={split}", f"--device={c.device}")
    if code == 0:
        result["eval"] = json.loads(out.strip().splitlines()[-1])
    return result


GRAPH_BREAK = re.compile(r"graph break", re.IGNORECASE)
RECOMPILE = re.compile(r"recompiling function", re.IGNORECASE)


def check_torchrun(c):
    """torchrun --nproc_per_node=1: DDP equal to one process over the same steps; FSDP with compile,
    with torch's graph-break log lines counted (expected: none) and its recompile lines (the switch
    between training and eval mode makes one per compiled block: a figure, not a failure)."""
    n = 8 if c.quick else 20
    one, ddp, fsdp = c.path("one"), c.path("ddp"), c.path("fsdp")
    c.python("train.py", *small_char(c, one, max_iters=n), what="one process")
    c.torchrun(*small_char(c, ddp, max_iters=n), what="torchrun DDP")
    d = max_difference(losses_by_iter(one)[0], losses_by_iter(ddp)[0], range(1, n + 1))
    if d is None or d > RESUME_TOLERANCE:
        c.fail(f"torchrun DDP: training losses differ by {d} from one process (tolerance {RESUME_TOLERANCE})")
    compile = c.device != "cpu"  # inductor on a CPU takes minutes: the quick run checks the plumbing only
    code, out = c.torchrun(*small_char(c, fsdp, max_iters=n, fsdp=True, compile=compile),
                           env={"TORCH_LOGS": "graph_breaks,recompiles"}, what="torchrun FSDP")
    breaks, recompiles = len(GRAPH_BREAK.findall(out)), len(RECOMPILE.findall(out))
    if compile and code == 0 and breaks:
        c.fail(f"torchrun FSDP with compile: {breaks} graph-break log lines")
    return {"ddp_max_train_loss_difference": d, "fsdp_compiled": compile, "fsdp_graph_break_lines": breaks,
            "fsdp_recompile_lines": recompiles}


def check_sample_syncs(c):
    """Host syncs per generated token with the KV cache (expected: one), counted two ways on CUDA:
    torch's sync debug mode (a warning per synchronizing call) and the profiler's CUDA runtime calls."""
    import warnings
    import torch
    from devices import resolve_device
    from model import GPT, GPTConfig
    device = resolve_device(c.device)
    shape = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512) if c.quick else \
        dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).to(device).eval()
    prompts = [[1, 2, 3, 4], [5, 6]]
    model.generate(prompts, 4, temperature=1.0, top_k=50)  # warm-up
    result = {"device": device, "model": shape}
    if not device.startswith("cuda"):
        result["note"] = "sync counts need CUDA (tests/test_generate.py counts Python-level reads on a CPU)"
        return result

    def debug_mode_syncs(tokens):
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                model.generate(prompts, tokens, temperature=1.0, top_k=50)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message).lower() for w in caught)

    short, long = debug_mode_syncs(1), debug_mode_syncs(33)
    result["debug_mode_syncs"] = {"1_token": short, "33_tokens": long, "per_token": (long - short) / 32}
    from torch.profiler import ProfilerActivity, profile
    calls = {}
    for tokens in (1, 33):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model.generate(prompts, tokens, temperature=1.0, top_k=50)
        calls[tokens] = {e.key: e.count for e in prof.key_averages()
                         if e.key.startswith(("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy",
                                              "cudaEventSynchronize"))}
    result["profiler_calls"] = {"1_token": calls[1], "33_tokens": calls[33],
                                "per_token": {k: (v - calls[1].get(k, 0)) / 32 for k, v in calls[33].items()}}
    if result["debug_mode_syncs"]["per_token"] > 1:
        c.fail(f"{result['debug_mode_syncs']['per_token']:.2f} host syncs per generated token (expected 1)")
    return result


def check_pytest(c):
    """The tests of the paths a GPU changes, on the GPU machine's own torch (--quick: one fast file)."""
    files = ["tests/test_layout.py"] if c.quick else \
        ["tests/test_gpu_path.py", "tests/test_generate.py", "tests/test_model.py", "tests/test_distributed.py"]
    _, out = c.command([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], what="pytest")
    return {"files": files, "summary": last_line(out)}


CHECKS = {"char-modern": check_char_modern, "cuda-paths": check_cuda_paths, "torchrun": check_torchrun,
          "sample-syncs": check_sample_syncs, "char-classic": check_char_classic, "pytest": check_pytest}


def run_check(name, device, quick, work_dir=None):
    """One check's figures, its failures and its time, as one dict; its scratch folder goes inside
    work_dir (None: the system's temporary folder)."""
    c = Check(device, quick, work_dir)
    t = time.time()
    try:
        figures = CHECKS[name](c)
    finally:
        c.close()
    return {"check": name, "device": device, "quick": quick, "ok": not c.failures, "failures": c.failures,
            "seconds": round(time.time() - t, 1), **figures}

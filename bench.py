"""
Measured speed: one subcommand per thing measured, each with its own options (--help lists them).
Every subcommand prints a readable line to stderr and one JSON line to stdout.

    python bench.py train config/tinystories_124m.py --batch_size=16   # training step: tokens/s, MFU, memory
    python bench.py gpu --out=$OUT            # the whole GPU session (--budget: its time limit, 330 s); --quick: a toy shape
    python bench.py sample                    # generation: KV cache vs full recomputation, GPT-2 124M shape
    python bench.py prepare --megabytes=100   # tokenization: 1 vs 2 workers vs a plain tiktoken loop; peak RSS
    python bench.py sample --n_layer=4 --prompt_tokens=64 --new_tokens=32 --repeats=5   # a quick look
    python bench.py recipes --recipe=char     # each modern switch over 3 seeds: docs/recipes.md

Timings exclude a short warm-up run and report the median of the timed runs.
"""

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, fields

if __name__ == "__main__":  # Ctrl-C while the imports load exits quietly; run() gives it back its usual meaning
    __import__("configurator").quiet_interrupts()
import torch

from configurator import UserError, parse_args, run
from metrics import estimate_mfu
from model import GPT, GPTConfig
from devices import inference_device
import tokenizer as tok


def timed(fn, repeats, device):
    """Seconds of each of `repeats` calls of fn()."""
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


@dataclass
class SampleBench:
    """Generation speed with the KV cache and with full recomputation (random weights: speed does not need trained ones)."""
    n_layer: int = 12  # model shape: GPT-2 124M by default
    n_head: int = 12  # attention heads
    n_embd: int = 768  # width
    block_size: int = 1024  # context length
    vocab_size: int = 50257  # vocabulary
    batch_size: int = 1  # sequences generated together
    prompt_tokens: int = 512  # tokens of (random) prompt
    new_tokens: int = 256  # tokens generated after it (greedy; no end-of-text)
    modes: list[str] = field(default_factory=lambda: ["cache", "recompute"])  # cache, recompute, or both (then their ratio)
    repeats: int = 3  # timed runs with the cache (median reported)
    recompute_repeats: int = 1  # timed runs of full recomputation (minutes each for 124M on a CPU)
    warmup_tokens: int = 4  # tokens of the untimed warm-up run before each mode's timed runs
    seed: int = 1337  # weights and prompt
    threads: int = 0  # CPU threads for PyTorch (0: its default, one per core)
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, mps
    dtype: str = "float32"  # float32, bfloat16, float16 (float16 on CUDA only)


def bench_sample(cfg):
    if not cfg.modes or set(cfg.modes) - {"cache", "recompute"}:
        raise UserError(f"modes={cfg.modes}: expected cache, recompute or both")
    if cfg.prompt_tokens < 1 or cfg.new_tokens < 1 or cfg.prompt_tokens + cfg.new_tokens > cfg.block_size:
        raise UserError(f"need 1 <= prompt_tokens, 1 <= new_tokens and prompt_tokens + new_tokens <= block_size "
                        f"({cfg.block_size}): both modes then see exactly the same context")
    device, ctx = inference_device(cfg.device, cfg.dtype)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                          vocab_size=cfg.vocab_size)).to(device).eval()
    prompts = torch.randint(cfg.vocab_size, (cfg.batch_size, cfg.prompt_tokens)).tolist()
    result = {"bench": "sample", **asdict(cfg), "device": device, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "params": model.get_num_params()}
    for mode in cfg.modes:
        def go(n=cfg.new_tokens, mode=mode):
            with ctx:
                model.generate(prompts, n, temperature=0, use_cache=mode == "cache")
        go(cfg.warmup_tokens)
        times = timed(go, cfg.repeats if mode == "cache" else cfg.recompute_repeats, device)
        seconds = statistics.median(times)
        result[mode] = {"seconds": seconds, "runs": times, "tokens_per_sec": cfg.batch_size * cfg.new_tokens / seconds}
    if len(result.keys() & {"cache", "recompute"}) == 2:
        result["speedup"] = result["recompute"]["seconds"] / result["cache"]["seconds"]
    parts = [f"{m} {result[m]['seconds']:.2f} s ({result[m]['tokens_per_sec']:.1f} tok/s)" for m in cfg.modes]
    speedup = f", KV cache {result['speedup']:.1f}x faster" if "speedup" in result else ""
    print(f"sample {cfg.new_tokens} tokens after {cfg.prompt_tokens}, {result['params'] / 1e6:.1f}M params, batch "
          f"{cfg.batch_size}, {device} {cfg.dtype}, {result['threads']} threads: {', '.join(parts)}{speedup}",
          file=sys.stderr)
    return result


# ---------------------------------------------------------------------------------------------
# train: the real training step, on random tokens

SDPA_BACKENDS = {"flash": "flash", "cudnn": "cudnn", "efficient": "mem_efficient", "math": "math"}  # ours: torch's


def use_sdpa(choice):
    """Allow only one scaled_dot_product_attention kernel (torch's global switches, which torch.compile
    also obeys); "auto" leaves torch to choose."""
    if choice == "auto":
        return
    if choice not in SDPA_BACKENDS:
        raise UserError(f"sdpa={choice!r}: expected auto, {', '.join(SDPA_BACKENDS)}")
    for name in SDPA_BACKENDS.values():
        getattr(torch.backends.cuda, f"enable_{name}_sdp")(name == SDPA_BACKENDS[choice])


def sdpa_kernel(model, batch_size, device, dtype):
    """The attention kernel torch picks for this model's training shapes: FLASH_ATTENTION, CUDNN_ATTENTION,
    EFFICIENT_ATTENTION or MATH (its dispatcher's own choice, asked directly); None if it cannot say."""
    from torch.nn.attention import SDPBackend
    c = model.config
    q = torch.randn(batch_size, c.n_head, c.block_size, c.n_embd // c.n_head, device=device, dtype=dtype,
                    requires_grad=True)
    try:
        return SDPBackend(torch._fused_sdp_choice(q, q, q, dropout_p=c.dropout, is_causal=True)).name
    except Exception:  # a private function: it may change or go
        return None


def device_info(device):
    """What the figures were measured on: the GPU and the software under it, or the CPU."""
    import platform
    info = {"torch": torch.__version__}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, sm_count=p.multi_processor_count, capability=f"{p.major}.{p.minor}",
                    gpu_memory_bytes=p.total_memory, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        info.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


@dataclass
class TrainBench:
    """Training speed of a config (any train.py keys may follow): tokens/s, MFU against the device's
    bf16 peak, peak memory, compile time apart from the steady state, and what it ran on. Calls
    train.py's own optimizer step on random tokens, so what is timed is exactly what training does
    (no evals or checkpoints in between)."""
    steps: int = 20  # timed steps (after the warm-up ones); the median step is reported
    warmup_steps: int = 3  # untimed steps first (the first one includes torch.compile)
    vocab_size: int = 50257  # vocabulary of the random tokens
    tokens: int = 2_000_000  # random tokens to train on (the data loader needs some)
    sdpa: str = "auto"  # attention kernel: auto (torch's choice), flash, cudnn, efficient or math


def random_dataset(path, vocab_size, tokens):
    """A prepared dataset of uniformly random tokens (train and val), for speed, not learning."""
    import os
    import numpy as np
    from shards import write_meta, write_shard
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        write_shard(os.path.join(path, f"{split}_000000.bin"), rng.integers(vocab_size, size=tokens), vocab_size)
    write_meta(path, {"tokenizer": {"kind": "random", "vocab_size": vocab_size, "eot_id": vocab_size - 1},
                      "counts": {"train": {"tokens": tokens}, "val": {"tokens": tokens}}})


def bench_train(cfg, train_args):
    import os
    import resource
    import tempfile
    import train as train_module
    from configurator import parse_overrides
    from torch._dynamo.utils import counters
    overrides = parse_overrides(train_module.TrainConfig, train_args, prog="bench.py train")
    if cfg.steps < 1 or cfg.warmup_steps < 1:
        raise UserError("steps and warmup_steps must be at least 1 (the first step compiles)")
    use_sdpa(cfg.sdpa)
    with tempfile.TemporaryDirectory() as tmp:
        random_dataset(os.path.join(tmp, "random"), cfg.vocab_size, cfg.tokens)
        steps = cfg.warmup_steps + cfg.steps
        overrides.update(dataset=os.path.join(tmp, "random"), out_dir=os.path.join(tmp, "out"), max_iters=steps,
                         plot=False, sample_tokens=0, wandb_log=False,
                         lr_decay_iters=max(steps, overrides.get("lr_decay_iters", 0)))
        trainer = train_module.Trainer(train_module.TrainConfig(**overrides), overrides)
        cuda = trainer.device_type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(trainer.device)
        trainer.fetch()
        times = timed(trainer.step, steps, trainer.device)  # step() syncs once (the loss); timed() syncs too
        trainer.close()
    step = statistics.median(times[cfg.warmup_steps:])
    tok_s = trainer.tokens_per_iter / step
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[trainer.dtype]
    result = {"bench": "train", **asdict(cfg), "config": overrides, **device_info(trainer.device),
              "device": trainer.device, "dtype": trainer.dtype, "compile": trainer.use_compile,
              "params": trainer.raw_model.get_num_params(), "vocab_rows": trainer.raw_model.lm_head.weight.shape[0],
              "tokens_per_step": trainer.tokens_per_iter, "step_seconds": step,
              "step_seconds_min_max": [min(times[cfg.warmup_steps:]), max(times[cfg.warmup_steps:])],
              "tokens_per_sec": tok_s, "flops_per_token": trainer.flops_per_token,
              "mfu": estimate_mfu(trainer.flops_per_token, tok_s, trainer.device),
              "sdpa_kernel": sdpa_kernel(trainer.raw_model, trainer.cfg.batch_size, trainer.device,
                                         dtype if cuda else torch.float32),
              "first_step_seconds": times[0], "compile_seconds": max(0.0, times[0] - step) if trainer.use_compile else 0.0,
              "graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
              "peak_memory_bytes": (torch.cuda.max_memory_allocated(trainer.device) if cuda
                                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
              "peak_reserved_bytes": torch.cuda.max_memory_reserved(trainer.device) if cuda else None,
              "memory_kind": "cuda max allocated" if cuda else "process peak RSS"}
    mfu = f", MFU {result['mfu'] * 100:.1f}%" if result["mfu"] is not None else ""
    print(f"train {result['params'] / 1e6:.1f}M params, {trainer.tokens_per_iter:,} tokens/step, {trainer.device} "
          f"{trainer.dtype}{' compiled' if trainer.use_compile else ''}, attention {result['sdpa_kernel']}: "
          f"{tok_s:,.0f} tokens/s (median step {step * 1000:.1f} ms){mfu}, first step {times[0]:.1f} s, peak memory "
          f"{result['peak_memory_bytes'] / 2**30:.2f} GiB ({result['memory_kind']})", file=sys.stderr)
    return result


# ---------------------------------------------------------------------------------------------
# gpu: the whole GPU sweep, one command, each run in a process of its own

TOKENS_124M = 524_288  # GPT-2's batch: 16 x 1024 x 32
GPT2 = ["config/tinystories_124m.py"]  # 124M, 1024 context, bf16, compiled, micro-batch 16, biases, vocab unpadded
SMALL = ["config/tinystories.py"]  # the 17.9M default, 131,072 tokens per step


def micro(batch, tokens=TOKENS_124M, block=1024):
    """A micro-batch of `batch` at the same tokens per step."""
    return [f"--batch_size={batch}", f"--gradient_accumulation_steps={tokens // (batch * block)}"]


# (name, bench.py arguments), most important first: a sweep that runs out of time loses the tail.
# "train" runs time a training step (bench_train); "check" runs are gpucheck.py's checks.
GPU_SWEEP = [
    ("124m-pad", ["train", *GPT2]),  # the shipped config with the vocabulary padded to 50,304 (train.py's default)
    ("char-modern", ["check", "--name=char-modern"]),  # config/shakespeare_char_modern.py's curve to val 1.47
    ("cuda-paths", ["check", "--name=cuda-paths"]),  # resume, float16 resume, sample.py, eval.py on the device
    ("torchrun", ["check", "--name=torchrun"]),  # DDP and FSDP + compile under torchrun --nproc_per_node=1
    ("sample-syncs", ["check", "--name=sample-syncs"]),  # host syncs per generated token
    ("124m", ["train", *GPT2, "--pad_vocab_to=1"]),  # the vocabulary unpadded: what the padding buys
    ("124m-pad-mb32", ["train", *GPT2, *micro(32)]),
    ("124m-pad-mb64", ["train", *GPT2, *micro(64)]),
    ("124m-pad-flash", ["train", *GPT2, "--sdpa=flash"]),
    ("124m-pad-cudnn", ["train", *GPT2, "--sdpa=cudnn"]),
    ("124m-pad-nobias", ["train", *GPT2, "--bias=False"]),
    ("124m-pad-eager", ["train", *GPT2, "--compile=False"]),  # what torch.compile buys
    ("17m-mb32", ["train", *SMALL]),
    ("17m-mb64", ["train", *SMALL, *micro(64, 131_072)]),
    ("17m-mb128", ["train", *SMALL, *micro(128, 131_072)]),
    ("char-classic", ["check", "--name=char-classic"]),  # config/shakespeare_char.py as nanoGPT ran it
    ("pytest", ["check", "--name=pytest"]),  # the GPU-path, generation, model and distributed tests there
]
QUICK = ["--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=64", "--gradient_accumulation_steps=1",
         "--vocab_size=1000", "--tokens=100000", "--steps=2"]  # the same runs at a toy shape: the plumbing


@dataclass
class GpuBench:
    """The GPU session of docs/benchmarks.md ("GPU: how to measure") in one command: GPT-2 124M and the
    17.9M config over vocabulary padding, micro-batch, attention kernel, compile and biases, and
    gpucheck.py's checks (shakespeare_char to its target, resume, float16, sample.py, eval.py, torchrun,
    host syncs, the tests). Every run is a process of its own with a timeout, so a slow compile, an
    out-of-memory or a hang loses that run only; each writes one JSON line to OUT/runs.jsonl and its
    output to OUT/runs.log (two files: a lent machine gives back few), and a table ends it."""
    out: str = "out/bench_gpu"  # runs.jsonl (one JSON line per run, failures too) and runs.log (every run's output) go here
    quick: bool = False  # every run at a toy shape (the 124M runs 2 steps): checks the plumbing, on a CPU too
    only: list[str] = field(default_factory=list)  # run only these names (see the table); empty: all
    budget: float = 330.0  # a time limit for the whole sweep, in seconds: each run gets what is left (at most --timeout); under 30 s left, the rest are recorded as skipped
    timeout: float = 150.0  # seconds one run may take, compile included
    steps: int = 4  # timed steps per training run (1 warm-up step first; 10 x as many for the 17.9M runs)
    device: str = "auto"  # passed to every run: auto, cuda, cpu


@dataclass
class CheckBench:
    """One of gpucheck.py's checks (bench.py gpu runs them all): its figures and failures as JSON."""
    name: str = "cuda-paths"  # char-modern, cuda-paths, torchrun, sample-syncs, char-classic, pytest
    device: str = "auto"  # auto, cuda, cpu
    quick: bool = False  # a toy shape: the plumbing
    work_dir: str = ""  # the scratch folder goes inside this one (empty: the system's temporary folder)


def bench_check(cfg):
    import gpucheck
    from devices import resolve_device
    if cfg.name not in gpucheck.CHECKS:
        raise UserError(f"name={cfg.name!r}: expected one of {', '.join(gpucheck.CHECKS)}")
    result = gpucheck.run_check(cfg.name, resolve_device(cfg.device), cfg.quick, cfg.work_dir or None)
    print(f"check {cfg.name}: {'ok' if result['ok'] else 'FAILED: ' + '; '.join(result['failures'])} "
          f"({result['seconds']} s)", file=sys.stderr)
    return result


def run_one(name, args, timeout, log):
    """Run `python bench.py ARGS` in its own process group, its output appended to the open file log;
    (result dict, or None) and an error."""
    import os
    import signal
    import subprocess
    log.write(f"\n===== {name}: python bench.py {' '.join(args)}\n")
    log.flush()
    start = log.tell()
    proc = subprocess.Popen([sys.executable, "bench.py", *args], stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # compile workers and a check's own commands too
        proc.communicate()
        return None, f"timeout after {timeout:.0f} s"
    if proc.returncode != 0:
        log.flush()
        with open(log.name) as f:
            f.seek(start)
            lines = f.read().strip().splitlines()
        return None, f"exit {proc.returncode}: {lines[-1] if lines else ''}"[:300]
    return json.loads(out.strip().splitlines()[-1]), None


def bench_gpu(cfg):
    import os
    import tempfile
    names = [n for n, _ in GPU_SWEEP]
    unknown = [n for n in cfg.only if n not in names]
    if unknown:
        raise UserError(f"only={unknown}: not in the sweep; its runs are {', '.join(names)}")
    from devices import resolve_device
    quick = QUICK + (["--compile=False"] if resolve_device(cfg.device) == "cpu" else [])  # inductor on a CPU: minutes
    os.makedirs(cfg.out, exist_ok=True)
    path = os.path.join(cfg.out, "runs.jsonl")
    t0, rows = time.time(), []
    # the checks' scratch folders go inside one of the sweep's own, removed at the end: also those of a
    # check killed at its timeout
    with (open(os.path.join(cfg.out, "runs.log"), "a") as log,
          tempfile.TemporaryDirectory(prefix="nanogpt-gpu-", ignore_cleanup_errors=True) as scratch):
        for name, args in GPU_SWEEP:
            if cfg.only and name not in cfg.only:
                continue
            if args[0] == "train":
                steps = cfg.steps * (10 if name.startswith("17m") else 1)
                args = args + [f"--steps={steps}", "--warmup_steps=1",
                               f"--tokens={max(2_000_000, 2 * (steps + 1) * TOKENS_124M)}"] + (quick if cfg.quick else [])
            else:
                args = args + [f"--work_dir={scratch}"] + (["--quick=True"] if cfg.quick else [])
            args = args + [f"--device={cfg.device}"]
            left = cfg.budget - (time.time() - t0)
            row = {"name": name, "args": args}
            if left < min(30.0, cfg.timeout):
                row["error"] = f"skipped: {left:.0f} s left of the {cfg.budget:.0f} s budget"
            else:
                t = time.time()
                result, error = run_one(name, args, min(cfg.timeout, left), log)
                row.update(wall_seconds=round(time.time() - t, 1), **(result or {}), **({"error": error} if error else {}))
            rows.append(row)
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(gpu_table_line(row), file=sys.stderr, flush=True)
    print(gpu_table(rows), file=sys.stderr)
    skipped = [r["name"] for r in rows if r.get("error", "").startswith("skipped")]
    if skipped:
        print(f"left to run: python bench.py gpu --out=$OUT --only {' '.join(skipped)}", file=sys.stderr)
    return {"bench": "gpu", "out": path, "runs": [{k: r.get(k) for k in ("name", "tokens_per_sec", "mfu", "ok", "error")}
                                                  for r in rows]}


def gpu_table_line(r):
    if "error" in r:
        return f"{r['name']:<16} {r['error']}"
    if "check" in r:
        return f"{r['name']:<16} {'ok' if r['ok'] else 'FAILED: ' + '; '.join(r['failures'])[:200]} ({r['wall_seconds']:.0f} s)"
    mfu = f"{r['mfu'] * 100:5.1f}%" if r.get("mfu") is not None else "    - "
    return (f"{r['name']:<16} {r['tokens_per_sec']:>12,.0f} {mfu} {r['step_seconds'] * 1000:>9.1f} "
            f"{r['compile_seconds']:>8.1f} {r['peak_memory_bytes'] / 2**30:>8.2f} {str(r['sdpa_kernel']):<20} "
            f"{r['wall_seconds']:>6.0f}")


def gpu_table(rows):
    head = (f"{'run':<16} {'tokens/s':>12} {'MFU':>6} {'step ms':>9} {'compile':>8} {'peak GiB':>8} "
            f"{'attention':<20} {'wall s':>6}")
    device = next((r.get("gpu") or r.get("cpu") for r in rows if "error" not in r and "check" not in r), "?")
    return "\n".join([f"device: {device}", head] + [gpu_table_line(r) for r in rows])


# ---------------------------------------------------------------------------------------------
# prepare: tokenization throughput and memory

@dataclass
class PrepareBench:
    """Tokenization speed with 1 and N worker processes against a plain single-process
    tiktoken.encode_ordinary_batch loop over the same documents, and the peak memory of a whole prepare."""
    input: str = "assets/tinyshakespeare.txt"  # the text; repeated until it is `megabytes` long
    megabytes: float = 100.0  # size of the corpus to tokenize
    doc_chars: int = 2000  # the corpus is cut into documents of about this many characters
    workers: list[int] = field(default_factory=lambda: [1, 2])  # prepare.py's --num_proc values to time
    repeats: int = 3  # timed runs of each (interleaved); the median is reported
    baseline: bool = True  # also time the plain tiktoken loop
    memory: bool = True  # also run a whole prepare.py in a subprocess: peak RSS of all its processes, summed (sampled every 50 ms)
    work_dir: str = "/tmp/nanogpt-bench-prepare"  # where the corpus and the prepared data go: a folder bench.py makes and deletes after (inside this one if it already exists)


def tree_rss(pid):
    """Resident bytes of a process and all its descendants, from /proc (Linux); 0 once it is gone."""
    import glob
    total = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            total += next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
        for path in glob.glob(f"/proc/{pid}/task/*/children"):
            with open(path) as f:
                total += sum(tree_rss(int(child)) for child in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def bench_prepare(cfg):
    import os
    import shutil
    import subprocess
    from prepare import PrepareConfig, prepare
    from sources import SourceConfig
    from safeio import ScratchDir
    if not os.path.isfile(cfg.input):  # before any folder is made
        raise UserError(f"--input {cfg.input} not found: give a UTF-8 text file")
    try:
        with open(cfg.input, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"--input {cfg.input} is not UTF-8 text (byte {e.start})") from None
    scratch = ScratchDir(cfg.work_dir)  # removed afterwards only if bench.py made it (never a folder of yours)
    work_dir = scratch.__enter__()
    try:
        corpus = os.path.join(work_dir, "corpus.jsonl")
        target, written = int(cfg.megabytes * 2**20), 0
        with open(corpus, "w", encoding="utf-8") as f:  # one JSON document per line, about doc_chars each
            while written < target:
                for i in range(0, len(text), cfg.doc_chars):
                    line = json.dumps({"text": text[i:i + cfg.doc_chars]}) + "\n"
                    f.write(line)
                    written += len(line.encode())
                    if written >= target:
                        break
        result = {"bench": "prepare", **asdict(cfg), "corpus_bytes": written, "cpus": os.cpu_count(),
                  "torch": torch.__version__}

        def tiktoken_loop():  # the documents already in memory: what is timed is tokenization alone
            docs = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
            enc = tok.gpt2_encoding()
            t = time.perf_counter()
            n = sum(len(ids) + 1 for i in range(0, len(docs), 1024) for ids in enc.encode_ordinary_batch(docs[i:i + 1024]))
            return time.perf_counter() - t, n

        def prepare_with(w):
            t = time.perf_counter()
            meta = prepare(PrepareConfig(data_root=work_dir, name=f"w{w}", num_proc=w, val_fraction=0.0,
                                         overwrite=True), [SourceConfig(input=[corpus])])
            seconds = time.perf_counter() - t
            shutil.rmtree(os.path.join(work_dir, f"w{w}"))
            return seconds, meta["counts"]["train"]["tokens"]

        runs = {**({"tiktoken_batch_loop": tiktoken_loop} if cfg.baseline else {}),
                **{f"w{w}": (lambda w=w: prepare_with(w)) for w in cfg.workers}}
        times, tokens = {name: [] for name in runs}, {}
        for _ in range(cfg.repeats):  # interleaved, so that a slow spell of the machine hits all of them
            for name, fn in runs.items():
                seconds, tokens[name] = fn()
                times[name].append(seconds)
        for name, ts in times.items():
            seconds = statistics.median(ts)
            result[name] = {"seconds": seconds, "runs": ts, "tokens": tokens[name], "tokens_per_sec": tokens[name] / seconds}
        if cfg.memory:  # a whole prepare.py, measured from outside: its processes' resident memory, summed
            cmd = [sys.executable, "prepare.py", "--input", corpus, "--data_root", work_dir, "--name", "mem",
                   "--overwrite", "--val_fraction", "0"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            peak = 0
            while proc.poll() is None:
                peak = max(peak, tree_rss(proc.pid))
                time.sleep(0.05)
            if proc.returncode == 0:
                result["peak_rss_bytes"] = peak
    finally:
        scratch.__exit__(None, None, None)
    parts = [f"{k}: {result[k]['tokens_per_sec']:,.0f} tok/s" for k in ["tiktoken_batch_loop"] + [f"w{w}" for w in cfg.workers]
             if k in result]
    scale = (f", {result['w2']['tokens_per_sec'] / result['w1']['tokens_per_sec']:.2f}x with 2 workers"
             if "w1" in result and "w2" in result else "")
    rss = f", peak RSS (all processes) {result['peak_rss_bytes'] / 2**30:.2f} GiB" if "peak_rss_bytes" in result else ""
    print(f"prepare {written / 2**20:.0f} MiB: {', '.join(parts)}{scale}{rss}", file=sys.stderr)
    return result


# ---------------------------------------------------------------------------------------------
# recipes: what each modern switch buys, in val loss at equal steps and at equal wall time

CPU_RECIPE = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=50", "--block_size=64",
              "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0", "--plot=False",
              "--sample_tokens=0"]  # nanoGPT's CPU recipe (README), less the per-step printing
RECIPES = {  # name: (dataset, steps, eval_interval)
    "char": ("shakespeare_char", 2000, 100),  # the recipe itself: python prepare.py --input ... --tokenizer char
    "bpe": ("shakespeare", 200, 50),  # the same model on GPT-2 tokens: python prepare.py --input ... --name shakespeare
}
VARIANTS = {
    "classic": [],
    "rope": ["--rope=True"],
    "rmsnorm": ["--norm=rmsnorm"],
    "qk_norm": ["--qk_norm=True"],
    "relu2": ["--mlp=relu2"],
    "swiglu": ["--mlp=swiglu"],
    "untied": ["--tie_embeddings=False"],
    "zero_init": ["--zero_init=True"],
    "softcap": ["--logit_softcap=15.0"],
    "muon": ["--optimizer=muon"],
    "modern": ["--rope=True", "--qk_norm=True", "--optimizer=muon"],  # config/shakespeare_char_modern.py's switches
}


@dataclass
class RecipesBench:
    """Train each variant of a recipe over seeds; report val loss at equal steps and at equal wall time."""
    recipe: str = "char"  # char: nanoGPT's CPU recipe on shakespeare_char; bpe: the same model on GPT-2 tokens
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))  # names in bench.VARIANTS, or custom:"--key=v ..."
    seeds: list[int] = field(default_factory=lambda: [1337, 1, 2])  # one run per seed and variant
    max_iters: int = 0  # steps per run (0: the recipe's)
    eval_interval: int = 0  # steps between evals, the resolution of the curves (0: the recipe's)
    target: float = 1.88  # report when each run first reaches this val loss
    equal_time: float = 0.0  # seconds of training at which to compare (0: half the classic runs' mean time)
    config: str = "config/shakespeare_char.py"  # the config file the recipe starts from
    out_root: str = "out/recipes"  # runs go to out_root/<recipe>/<variant>/<seed>; results.jsonl beside them
    data_root: str = "data"  # where the prepared datasets are
    rerun: bool = False  # run again what results.jsonl already has


def variant_args(name):
    return VARIANTS[name] if name in VARIANTS else name.split()


def curve_at(evals, key, x, target_key="val_loss"):
    """Linear interpolation of val loss at x (a step or a time) along the evals; None outside them."""
    for a, b in zip(evals, evals[1:]):
        if a[key] <= x <= b[key]:
            f = (x - a[key]) / ((b[key] - a[key]) or 1)
            return a[target_key] + f * (b[target_key] - a[target_key])
    return None


def first_reach(evals, target):
    """(step, seconds) at which the val loss first reaches target, interpolated between evals."""
    for a, b in zip(evals, evals[1:]):
        if b["val_loss"] <= target < a["val_loss"]:
            f = (a["val_loss"] - target) / (a["val_loss"] - b["val_loss"])
            return a["iter"] + f * (b["iter"] - a["iter"]), a["time"] + f * (b["time"] - a["time"])
    return None


def bench_recipes(cfg):
    import os
    import shutil
    import subprocess
    from metrics import read_events
    if cfg.recipe not in RECIPES:
        raise UserError(f"recipe={cfg.recipe!r}: expected one of {list(RECIPES)}")
    dataset, steps, eval_interval = RECIPES[cfg.recipe]
    steps, eval_interval = cfg.max_iters or steps, cfg.eval_interval or eval_interval
    root = os.path.join(cfg.out_root, cfg.recipe)
    os.makedirs(root, exist_ok=True)
    results_path = os.path.join(root, "results.jsonl")
    done = {(r["variant"], r["seed"]) for r in read_events(results_path)} if not cfg.rerun else set()
    for variant in cfg.variants:
        for seed in cfg.seeds:
            if (variant, seed) in done:
                continue
            out = os.path.join(root, variant.replace(" ", "").replace("--", "_").replace("=", "-"), str(seed))
            if os.path.isdir(out):  # an unfinished run of an earlier call: start it again, if it is only a run
                import checkpoint
                theirs = [n for n in os.listdir(out) if n not in checkpoint.RUN_FILES + (checkpoint.LOCK,)
                          and not checkpoint.numbered(n) and not n.endswith((".tmp", ".tmp.png"))
                          and not checkpoint.SHARDS.fullmatch(n)]
                if theirs:
                    raise UserError(f"{out} holds {theirs[0]}, which is not a run's file: move it, or choose "
                                    f"another --out_root (nothing was removed)")
                shutil.rmtree(out)
            cmd = [sys.executable, "train.py", cfg.config, *CPU_RECIPE, f"--dataset={dataset}",
                   f"--data_root={cfg.data_root}", f"--max_iters={steps}", f"--lr_decay_iters={steps}",
                   f"--eval_interval={eval_interval}", f"--seed={seed}", f"--out_dir={out}", *variant_args(variant)]
            t0 = time.time()
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise UserError(f"{variant} seed {seed} failed: {r.stderr.strip().splitlines()[-1]}")
            evals = [e for e in read_events(os.path.join(out, "metrics.jsonl")) if "val_loss" in e]
            row = {"recipe": cfg.recipe, "variant": variant, "seed": seed, "steps": steps, "wall": time.time() - t0,
                   "train_time": evals[-1]["time"], "final_val": evals[-1]["val_loss"], "evals": evals,
                   "command": " ".join(cmd[1:])}
            with open(results_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{variant} seed {seed}: val {row['final_val']:.4f} after {steps} steps, {row['wall']:.1f} s",
                  file=sys.stderr)
    return summarize_recipes(read_events(results_path), cfg)


def summarize_recipes(rows, cfg):
    """Mean and spread over seeds per variant: final val, val at equal wall time, time to the target."""
    by = {}
    for r in rows:
        if r["variant"] in cfg.variants and r["seed"] in cfg.seeds:
            by.setdefault(r["variant"], []).append(r)
    classic = by.get("classic", [])
    t_eq = cfg.equal_time or (statistics.mean(r["train_time"] for r in classic) / 2 if classic else 0)

    def stats(xs):
        xs = [x for x in xs if x is not None]
        return (statistics.mean(xs), statistics.pstdev(xs), len(xs)) if xs else (None, None, 0)
    table = []
    for variant, runs in by.items():
        reach = [first_reach(r["evals"], cfg.target) for r in runs]
        table.append({"variant": variant, "runs": len(runs),
                      "final_val": stats([r["final_val"] for r in runs]),
                      "val_at_equal_time": stats([curve_at(r["evals"], "time", t_eq) for r in runs]),
                      "train_seconds": stats([r["train_time"] for r in runs]),
                      "seconds_to_target": stats([x[1] if x else None for x in reach])})
    lines = [f"equal wall time: {t_eq:.1f} s of training; target {cfg.target}",
             f"{'variant':<44} {'val @ steps':>16} {'val @ time':>16} {'train s':>9} {'s to target':>14}"]
    for row in table:
        def f(key, p=3, row=row):
            return "-" if row[key][0] is None else f"{row[key][0]:.{p}f}±{row[key][1]:.{p}f}"
        lines.append(f"{row['variant'][:44]:<44} {f('final_val'):>16} {f('val_at_equal_time'):>16} "
                     f"{row['train_seconds'][0]:>9.1f} {f('seconds_to_target', 1) + ' (' + str(row['seconds_to_target'][2]) + ')':>14}")
    print("\n".join(lines), file=sys.stderr)
    return {"bench": "recipes", "recipe": cfg.recipe, "equal_time": t_eq, "target": cfg.target, "table": table}


@dataclass
class CheckpointBench:
    """Saving and loading an FSDP run's whole state (model and AdamW moments) on 2 CPU processes (gloo):
    gathered into one file by rank 0 (fsdp checkpoints before sharding) against sharded with
    torch.distributed.checkpoint (each process its part). Each way runs in a torchrun of its own, so
    its peak memory is its own; seconds and each rank's peak resident memory (VmHWM) in the JSON."""
    n_layer: int = 12  # the model's shape: GPT-2 124M by default
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50304
    work_dir: str = "out/bench_checkpoint"  # where the checkpoints are written (made if missing; removed after)
    mode: str = ""  # internal: the torchrun worker's way (gathered or sharded)


def peak_rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def checkpoint_worker(cfg):
    """One torchrun worker: build the sharded model, make its optimizer state, save it, load it back."""
    import os
    import shutil

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    import distributed
    from safeio import write_text
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=64,
                          vocab_size=cfg.vocab_size, pad_vocab_to=1))
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(cfg.vocab_size, (1, 64))
    model(x, x, return_logits=False)[1].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    folder = os.path.join(cfg.work_dir, cfg.mode)
    os.makedirs(folder, exist_ok=True)
    before = peak_rss()
    dist.barrier()
    t0 = time.perf_counter()
    if cfg.mode == "sharded":
        distributed.save_sharded(model, opt, os.path.join(folder, "shards"))
    else:
        state = {"model": distributed.model_state(model), "optimizer": distributed.optimizer_state(model, opt)}
        if rank == 0:
            torch.save(state, os.path.join(folder, "ckpt.pt"))
        del state
    dist.barrier()
    t_save, after_save = time.perf_counter() - t0, peak_rss()
    t0 = time.perf_counter()
    if cfg.mode == "sharded":
        distributed.load_sharded(model, opt, os.path.join(folder, "shards"))
    else:  # as resume did: every process reads the whole file, then keeps its shards
        state = torch.load(os.path.join(folder, "ckpt.pt"), map_location="cpu", weights_only=True)
        distributed.load_model_state(model, state["model"])
        distributed.load_optimizer_state(model, opt, state["optimizer"])
        del state
    dist.barrier()
    t_load = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, {"rank": rank, "peak_before_gib": before / 2**30,
                                  "peak_after_save_gib": after_save / 2**30, "peak_after_load_gib": peak_rss() / 2**30})
    if rank == 0:  # to a file: on the shared stdout the other ranks' output could land on the same line
        shutil.rmtree(folder, ignore_errors=True)
        write_text(folder + ".json", json.dumps({"mode": cfg.mode, "save_s": round(t_save, 2),
                                                 "load_s": round(t_load, 2), "bytes": size, "ranks": rows}))
    dist.destroy_process_group()
    # leave without the interpreter's teardown, as train.py does under torchrun: there gloo's threads can
    # abort a finished process (SIGABRT, "terminate called without an active exception")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def bench_checkpoint(cfg):
    if cfg.mode:
        return checkpoint_worker(cfg)
    from safeio import ScratchDir
    scratch = ScratchDir(cfg.work_dir)  # removed afterwards only if bench.py made it (never a folder of yours)
    work_dir = scratch.__enter__()
    try:
        return {"bench": "checkpoint", "results": [checkpoint_run(cfg, mode, work_dir) for mode in ("gathered", "sharded")]}
    finally:
        scratch.__exit__(None, None, None)


def checkpoint_run(cfg, mode, work_dir):
    """One way (gathered or sharded) in a torchrun of its own: its figures."""
    import os
    import subprocess
    args = [f"--{k}={v}" for k, v in {**vars(cfg), "work_dir": work_dir}.items() if k != "mode"] + [f"--mode={mode}"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.abspath(__file__), "checkpoint", *args], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    path = os.path.join(work_dir, mode + ".json")
    if r.returncode or not os.path.isfile(path):
        raise UserError(f"the {mode} checkpoint run failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    print(f"{mode}: save {result['save_s']} s, load {result['load_s']} s, "
          f"{result['bytes'] / 2**30:.2f} GiB, peak per rank " + ", ".join(
              f"{row['peak_before_gib']:.2f} -> {row['peak_after_save_gib']:.2f} -> {row['peak_after_load_gib']:.2f} GiB"
              for row in result["ranks"]), file=sys.stderr)
    return result


COMMANDS = {"train": (TrainBench, bench_train), "gpu": (GpuBench, bench_gpu), "sample": (SampleBench, bench_sample),
            "prepare": (PrepareBench, bench_prepare), "recipes": (RecipesBench, bench_recipes),
            "checkpoint": (CheckpointBench, bench_checkpoint),
            "check": (CheckBench, bench_check)}


# what each command measures: `python bench.py --help` lists them
MEASURES = {
    "train": "a training step of a config (train.py's keys follow): tokens/s, MFU, peak memory",
    "gpu": "the GPU session: 124M and 17.9M speed over micro-batch, attention, compile, padding, and every check",
    "check": "one GPU check of gpucheck.py (resume, float16, sample/eval, torchrun, host syncs, shakespeare_char)",
    "sample": "generation: tokens/s with the KV cache and with full recomputation",
    "prepare": "tokenization: tokens/s with 1 and N workers against a plain tiktoken loop; peak memory",
    "recipes": "each modern switch over seeds: val loss at equal steps and at equal time (docs/recipes.md)",
    "checkpoint": "an FSDP state (GPT-2 124M shape, 2 CPU processes) saved and loaded gathered vs sharded: s, peak memory",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = (f"usage: python bench.py {{{','.join(COMMANDS)}}} [--key=value ...]  "
             f"(--help after a command lists its keys)")
    if argv and argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        print("\n".join([usage, "", "commands:"] + [f"  {c:<{width}}  {MEASURES[c]}" for c in COMMANDS]
                        + ["", "Each prints a readable line on stderr and one JSON line on stdout."]))
        return
    if not argv or argv[0] not in COMMANDS:
        raise UserError(f"{'unknown command ' + repr(argv[0]) if argv else 'no command'}; {usage}")
    cls, fn = COMMANDS[argv[0]]
    if argv[0] == "train":  # its own keys, and train.py's (a config file and --key=value) for the rest
        own, mine, theirs = {f"--{f.name}" for f in fields(cls)}, [], []
        args = iter(argv[1:])
        for a in args:
            if a.split("=")[0] in own:
                mine.append(a)
                if "=" not in a:
                    mine.append(next(args, ""))  # --steps 5
            else:
                theirs.append(a)
        print(json.dumps(fn(parse_args(cls, mine, prog="bench.py train"), theirs)))
        return
    print(json.dumps(fn(parse_args(cls, argv[1:], prog=f"bench.py {argv[0]}"))))


if __name__ == "__main__":
    run(main)

"""
Scaling laws measured on your own data: an IsoFLOP sweep, the Chinchilla paper's two fits, and a
check of what they predict.

    python scaling.py --dataset=shakespeare_char --flops=3e9,1e10,3e10 --check_flops=1e11 --block_size=32 \
        --batch_size=16 --tokens_per_param=100 "--model_args={'pad_vocab_to': 1}" --threads=1   # 6 min, 2 CPU cores
    python plan.py --fit=out/scaling/fit.json --flops=1e12

For each budget C it trains a ladder of model shapes (at least 5 sizes, even in log N around the
expected optimum), each for exactly the tokens C buys (C = 6 N D, N = model.py's FLOPs per token / 6),
with a cosine schedule that ends there. Every run is an ordinary train.py run in
out_dir/<budget>/<shape>/ (metrics.jsonl, checkpoints): a sweep run again skips finished runs and
resumes unfinished ones. On several GPUs runs go side by side, one per GPU; otherwise one after another.
Then fit.json (both fits, exponents with bootstrap stds), isoflop.png and optimal.png. --check_flops
trains the predicted optimal shape at a larger budget and one on each side (x2, /2) and writes how far
off the prediction was (check.json, and in fit.json). The library: scaling_laws.py.
"""

import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

import scaling_laws as sl
from configurator import UserError, parse_args, run
from dataloader import dataset_dir
from metrics import read_events
from safeio import write_text
from shards import hold_lock, read_meta, release_lock


@dataclass
class ScalingConfig:
    """Train IsoFLOP ladders of model sizes at several compute budgets, fit scaling laws, check a prediction."""
    dataset: str = "shakespeare_char"  # a folder under data_root made by prepare.py
    data_root: str = "data"  # where prepared datasets live
    flops: str = ""  # the budgets in FLOPs, separated by commas: 3e10,1e11,3e11 (at least 2 for the power laws)
    out_dir: str = "out/scaling"  # the sweep: one folder per budget and shape, fit.json and the pictures
    check_flops: float = 0.0  # > 0: after the fit, train the predicted optimum at this budget and one size each side
    points: int = 5  # model sizes per budget (at least 3 for a parabola; the paper used about 9)
    span: float = 16.0  # largest / smallest N of a budget's ladder
    tokens_per_param: float = 20.0  # where a ladder is centred: D = this x N (Chinchilla's 20)
    block_size: int = 64  # context length of every run
    batch_size: int = 16  # sequences per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per step
    learning_rate: float = 1e-3  # peak rate at 384 wide; others scale it by 384 / n_embd (capped at max_lr)
    max_lr: float = 1e-2  # the cap of that rule
    warmup: float = 0.05  # warmup as a fraction of a run's steps
    eval_iters: int = 50  # batches per split for the final evaluation
    eval_interval: int = 0  # steps between evaluations and checkpoints inside a run (0: only at the start and the end)
    min_steps: int = 10  # a run must take at least this many optimizer steps
    max_epochs: float = 4.0  # a run may repeat its training data at most this many times
    model_args: Optional[dict] = None  # model switches for every run, e.g. {'rope': True, 'mlp': 'swiglu'}
    seed: int = 1337  # every run's seed
    bootstrap: int = 100  # resamples for the exponents' uncertainty (0: none)
    device: str = "auto"  # passed to train.py: auto, cpu, cuda, mps
    dtype: str = "auto"  # passed to train.py
    compile: Optional[bool] = None  # passed to train.py (None: its default)
    gpus: int = -1  # runs side by side, one per GPU (-1: all CUDA GPUs; 0: none)
    jobs: int = 1  # without GPUs: runs side by side on the CPU (1: one after another)
    threads: int = 0  # CPU threads per run (OMP_NUM_THREADS; 0: torch's default). Tiny models on a busy CPU: 1


def settings(cfg, vocab_size):
    return {"dataset": cfg.dataset, "vocab_size": vocab_size, "block_size": cfg.block_size,
            "batch_size": cfg.batch_size, "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "tokens_per_step": cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps,
            "model_args": dict(cfg.model_args or {}), "learning_rate": cfg.learning_rate, "max_lr": cfg.max_lr,
            "warmup": cfg.warmup, "seed": cfg.seed}


def check_options(cfg):
    for key in ("points", "block_size", "batch_size", "gradient_accumulation_steps", "eval_iters", "min_steps"):
        if getattr(cfg, key) < 1:
            raise UserError(f"--{key}={getattr(cfg, key)}: must be at least 1")
    if cfg.points < 3:
        raise UserError(f"--points={cfg.points}: a parabola needs at least 3 sizes per budget (the issue: 5)")
    for key in ("span", "tokens_per_param", "learning_rate", "max_lr", "max_epochs"):
        if not getattr(cfg, key) > 0:
            raise UserError(f"--{key}={getattr(cfg, key)}: must be a positive number")
    if cfg.span <= 1:
        raise UserError(f"--span={cfg.span}: the ladder's largest N over its smallest must be more than 1")
    if not 0 <= cfg.warmup < 1 or cfg.eval_interval < 0 or cfg.bootstrap < 0 or cfg.threads < 0 or cfg.jobs < 1:
        raise UserError("--warmup must be in [0, 1), --eval_interval, --bootstrap and --threads at least 0, "
                        "--jobs at least 1")
    if not cfg.check_flops >= 0:
        raise UserError(f"--check_flops={cfg.check_flops}: must be a budget in FLOPs (0: no check)")


def planned_run(cfg, st, c, shape, train_tokens):
    """A budget's run of one shape: its steps and train.py's options; a one-line error if it cannot be."""
    args = tuple(sorted(st["model_args"].items()))
    p = sl.run_plan(c, shape, st["vocab_size"], cfg.block_size, st["tokens_per_step"], args)
    if p["steps"] < cfg.min_steps:
        smallest = sl.smallest_shape(st["vocab_size"], cfg.block_size, args)
        need = cfg.min_steps * st["tokens_per_step"] * sl.flops_per_token(smallest, st["vocab_size"], cfg.block_size, args)
        raise UserError(f"budget {c:.3g} FLOPs is too small: {p['name']} ({p['params']:,.0f} N) would train only "
                        f"{p['steps']} steps of {st['tokens_per_step']:,} tokens (--min_steps={cfg.min_steps}); even the "
                        f"smallest shape needs {need:.2g} FLOPs: raise the budget or lower --batch_size/--block_size")
    epochs = p["tokens"] / train_tokens
    if epochs > cfg.max_epochs:
        raise UserError(f"dataset {cfg.dataset} is too small for budget {c:.3g} FLOPs: {p['name']} "
                        f"({p['params']:,.0f} N) needs {p['tokens']:,} tokens, {epochs:.1f} epochs of its "
                        f"{train_tokens:,} train tokens (--max_epochs={cfg.max_epochs:g}): lower the budget, "
                        f"prepare more data or raise --max_epochs")
    lr = sl.learning_rate(shape[1], cfg.learning_rate, cfg.max_lr)
    steps = p["steps"]
    train_args = {"dataset": cfg.dataset, "data_root": cfg.data_root, **p["shape"], "block_size": cfg.block_size,
                  "batch_size": cfg.batch_size, "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                  "max_iters": steps, "lr_decay_iters": steps, "warmup_iters": round(cfg.warmup * steps),
                  "learning_rate": lr, "min_lr": lr / 10, "eval_interval": cfg.eval_interval or steps,
                  "eval_iters": cfg.eval_iters, "log_interval": max(1, steps // 20), "dropout": 0.0,
                  "seed": cfg.seed, "device": cfg.device, "dtype": cfg.dtype, "sample_tokens": 0, "plot": False,
                  "always_save_checkpoint": True, **st["model_args"]}
    if cfg.compile is not None:
        train_args["compile"] = cfg.compile
    return p | {"epochs": epochs, "learning_rate": lr, "dir": os.path.join(cfg.out_dir, f"{c:.3g}", p["name"]),
                "train_args": train_args}


def ladder_runs(cfg, st, c, train_tokens):
    shapes = sl.ladder(c, st["vocab_size"], cfg.block_size, cfg.points, cfg.span, cfg.tokens_per_param,
                       tuple(sorted(st["model_args"].items())))
    if len(shapes) < 3:  # a span too narrow for the shape family's steps
        raise UserError(f"budget {c:.3g} FLOPs: its ladder has only {len(shapes)} distinct shapes "
                        f"({', '.join(sl.shape_name(s) for s in shapes)}); a parabola needs 3: widen --span")
    return [planned_run(cfg, st, c, s, train_tokens) for s in shapes]


def train_command(r, resume):
    argv = [sys.executable, os.path.join(sl.ROOT, "train.py")]
    argv += [f"--{k}={v}" for k, v in r["train_args"].items()]
    if resume:
        argv.append("--init_from=resume")
    return argv


def final_eval(run_dir, steps):
    """The last eval event of a run's metrics.jsonl, if it is the one at its last step."""
    evals = [e for e in read_events(os.path.join(run_dir, "metrics.jsonl")) if "val_loss" in e and e.get("iter") == steps]
    return evals[-1] if evals else None


def result_of(run_dir):
    path = os.path.join(run_dir, "result.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return None


def train_one(r, bpt, env=None, log=print):
    """Train one planned run (or resume it, or skip it when its result.json is there); its result dict."""
    done = result_of(r["dir"])
    if done is not None:
        if done.get("train_args") != r["train_args"]:
            raise UserError(f"{r['dir']} holds a finished run with other settings: use another --out_dir, or the "
                            f"settings it was run with")
        return done
    os.makedirs(r["dir"], exist_ok=True)
    resume = os.path.isfile(os.path.join(r["dir"], "ckpt.pt"))
    t0 = time.time()
    with open(os.path.join(r["dir"], "train.log"), "a", encoding="utf-8") as out:
        code = subprocess.call(train_command(r, resume) + [f"--out_dir={r['dir']}"], cwd=sl.ROOT, stdout=out,
                               stderr=subprocess.STDOUT, env=env)
    if code:
        if code > 128:  # stopped by a signal, after a save: the sweep stops too, to be continued
            raise KeyboardInterrupt
        raise UserError(f"the run in {r['dir']} failed (train.py exit {code}): see {r['dir']}/train.log")
    e = final_eval(r["dir"], r["steps"])
    if e is None:
        raise UserError(f"the run in {r['dir']} ended without an eval at step {r['steps']}: see its train.log")
    result = {k: r[k] for k in ("flops", "name", "shape", "params", "flops_per_token", "steps", "tokens",
                                "actual_flops", "epochs", "learning_rate", "train_args")}
    result |= {"val_loss": e["val_loss"], "train_loss": e["train_loss"],
               "bits_per_byte": e["val_loss"] / math.log(2) / bpt if bpt else None,
               "seconds": time.time() - t0, "resumed": resume}
    write_text(os.path.join(r["dir"], "result.json"), json.dumps(result, indent=1))
    log(f"  {r['name']:>9} at {r['flops']:.3g} FLOPs: N {r['params']:,.0f}, {r['tokens']:,} tokens "
        f"({r['steps']} steps), val loss {result['val_loss']:.4f} in {result['seconds']:.0f} s"
        + (" (resumed)" if resume else ""))
    return result


def gpu_count(cfg):
    if cfg.gpus >= 0:
        return cfg.gpus
    if cfg.device not in ("auto", "cuda"):
        return 0
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_envs(cfg, gpus):
    """One environment per worker: a GPU each (CUDA_VISIBLE_DEVICES), or --jobs CPU workers."""
    base = dict(os.environ, **({"OMP_NUM_THREADS": str(cfg.threads)} if cfg.threads else {}))
    if gpus > 1:
        return [dict(base, CUDA_VISIBLE_DEVICES=str(g)) for g in range(gpus)]
    return [base] * max(1, cfg.jobs)


def train_all(runs, bpt, envs):
    """All the runs: one after another, or side by side, a worker per environment (one per GPU)."""
    todo = [r for r in runs if result_of(r["dir"]) is None]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already done", flush=True)
    if len(envs) == 1:
        return [train_one(r, bpt, envs[0]) for r in runs]
    results, errors, lock = {}, [], threading.Lock()
    queue = list(enumerate(runs))

    def worker(env):
        while True:
            with lock:
                if not queue or errors:
                    return
                i, r = queue.pop(0)
            try:
                results[i] = train_one(r, bpt, env)
            except BaseException as e:  # noqa: B036 -- handed to the main thread, which raises it
                with lock:
                    errors.append(e)
    threads = [threading.Thread(target=worker, args=(env,)) for env in envs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(runs))]


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=1))


def measured_optimum(results):
    n, loss, warning = sl.parabola_minimum([r["params"] for r in results], [r["val_loss"] for r in results])
    best = min(results, key=lambda r: r["val_loss"])
    if warning:  # no interior minimum: the best run is the measurement
        n, loss = best["params"], best["val_loss"]
    return {"params": n, "loss": loss, "best_run": best["name"], "warning": warning}


def check(cfg, st, fit, bpt, envs, train_tokens):
    """Train the predicted optimum at check_flops and a size each side; predicted against measured."""
    c = cfg.check_flops
    pred = sl.predict(fit, c)
    args = tuple(sorted(st["model_args"].items()))
    shapes = []
    for factor in (0.5, 1, 2):
        s = sl.pick_shape(pred["params"] * factor, st["vocab_size"], cfg.block_size, args)
        if s not in shapes:
            shapes.append(s)
    runs = [planned_run(cfg, st, c, s, train_tokens) for s in shapes]
    print(f"check at {c:.3g} FLOPs: predicted optimum N {pred['params']:,.0f}, loss {pred['predicted_loss']:.4f}; "
          f"training {', '.join(r['name'] for r in runs)}", flush=True)
    results = train_all(runs, bpt, envs)
    m = measured_optimum(results)
    pshape = sl.pick_shape(pred["params"], st["vocab_size"], cfg.block_size, args)
    at_pred = next(r for r in results if r["name"] == sl.shape_name(pshape))
    for r in results:
        r["predicted_loss"] = sl.parametric_loss(fit["parametric"], r["params"], r["tokens"])
    out = {"flops": c, "predicted": pred, "runs": results,
           "measured": {"params": m["params"], "tokens": c / (6 * m["params"]), "loss": m["loss"],
                        "best_run": m["best_run"], "warning": m["warning"]},
           "predicted_shape": at_pred["name"],
           "params_error_pct": 100 * (pred["params"] - m["params"]) / m["params"],
           "loss_error_pct": 100 * (pred["predicted_loss"] - m["loss"]) / m["loss"],
           "predicted_shape_loss_error_pct": 100 * (at_pred["predicted_loss"] - at_pred["val_loss"]) / at_pred["val_loss"]}
    return out


def sweep(cfg):
    check_options(cfg)
    budgets = sl.parse_budgets(cfg.flops)
    data_dir = dataset_dir(cfg.dataset, cfg.data_root)
    try:
        meta = read_meta(data_dir)
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or "tokenizer" not in meta:
        raise UserError(f"dataset {cfg.dataset!r}: no prepared dataset at {data_dir}: prepare it first, e.g. "
                        f"python prepare.py --input assets/tinyshakespeare.txt --tokenizer char --name shakespeare_char")
    vocab = meta["tokenizer"]["vocab_size"]
    train_tokens = meta["counts"]["train"]["tokens"]
    st = settings(cfg, vocab)
    runs = [r for c in budgets for r in ladder_runs(cfg, st, c, train_tokens)]  # every error before any training
    if cfg.check_flops and cfg.check_flops <= budgets[-1]:
        raise UserError(f"--check_flops={cfg.check_flops:.3g} must be larger than the largest budget "
                        f"({budgets[-1]:.3g}): it checks an extrapolation")
    os.makedirs(cfg.out_dir, exist_ok=True)
    lock = hold_lock(os.path.join(cfg.out_dir, "sweep.lock"),
                     lambda holder: f"another sweep ({holder}) is running in {cfg.out_dir}: wait for it, or use "
                                    f"another --out_dir")
    try:
        bpt = sl.bytes_per_token(data_dir)
        gpus = gpu_count(cfg)
        envs = worker_envs(cfg, gpus)
        t0 = time.time()
        print(f"sweep of {len(budgets)} budgets in {cfg.out_dir}: {len(runs)} runs"
              + (f" on {gpus} GPUs side by side" if gpus > 1 else f", {len(envs)} at a time"), flush=True)
        results = train_all(runs, bpt, envs)
        fit = {"kind": "scaling_fit", "settings": st, "budgets": budgets, "runs": results,
               **sl.fit_all(results, cfg.bootstrap, cfg.seed), "bytes_per_token": bpt,
               "sweep_seconds": time.time() - t0}
        if cfg.check_flops:
            fit["check"] = check(cfg, st, fit, bpt, envs, train_tokens)
            write_json(os.path.join(cfg.out_dir, "check.json"), fit["check"])
        write_json(os.path.join(cfg.out_dir, "fit.json"), fit)
        sl.plot(fit, cfg.out_dir)
    finally:
        release_lock(lock)
    return fit


def report(fit, out_dir):
    iso, par = fit["isoflop"], fit["parametric"]
    for b in iso["budgets"]:
        print(f"C {b['flops']:.3g}: N_opt {b['params']:,.0f}, D_opt {b['tokens']:,.0f}, loss {b['loss']:.4f}"
              + (f" ({b['warning']})" if b["warning"] else ""))
    for key, name in (("params_law", "N_opt"), ("tokens_law", "D_opt")):
        if key in iso:
            law = iso[key]
            std = f" ± {law['exponent_std']:.3f}" if law.get("exponent_std") is not None else ""
            print(f"fit (a): {name} = {law['k']:.3g} C^{law['exponent']:.3f}{std}")
    s = par["std"]

    def pm(k):
        return f" ± {s[k]:.3f}" if s.get(k) is not None else ""
    print(f"fit (b): L = {par['E']:.3f} + {par['A']:.3g} / N^{par['alpha']:.3f}{pm('alpha')} + {par['B']:.3g} / "
          f"D^{par['beta']:.3f}{pm('beta')}")
    if "check" in fit:
        ch = fit["check"]
        print(f"check at {ch['flops']:.3g}: predicted N {ch['predicted']['params']:,.0f}, measured "
              f"{ch['measured']['params']:,.0f} ({ch['params_error_pct']:+.1f}%); predicted loss "
              f"{ch['predicted']['predicted_loss']:.4f}, measured {ch['measured']['loss']:.4f} "
              f"({ch['loss_error_pct']:+.2f}%)")
    print(f"wrote {out_dir}/fit.json, isoflop.png, optimal.png")


def main(argv=None):
    cfg = parse_args(ScalingConfig, argv, prog="scaling.py")
    report(sweep(cfg), cfg.out_dir)


if __name__ == "__main__":
    run(main)

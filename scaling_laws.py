"""
Scaling laws measured on your own data: the ladder of model shapes an IsoFLOP sweep trains, the
budgets' arithmetic, and the two fits of the Chinchilla paper (Hoffmann et al. 2022,
https://arxiv.org/abs/2203.15556): (a) IsoFLOP profiles, a parabola in log N per budget whose minimum
is that budget's optimal size, then power laws through the minima; (b) the parametric
L(N, D) = E + A / N^alpha + B / D^beta, fitted with a Huber loss on log-loss from a grid of starts.
scaling.py runs the sweep; plan.py --fit plans with the result.

N here is this project's FLOP count per token over 6 (GPT.flops_per_token: 6 N_params + 12 L C T,
the attention scores included), so compute is C = 6 N D exactly, the paper's bookkeeping.
"""

import json
import math
import os
from functools import lru_cache

import numpy as np

from configurator import UserError

ROOT = os.path.dirname(os.path.abspath(__file__))
MAX_LAYERS = 16
# widths in steps of 8 below 64 (8 wide: a single head) (the tiny models a CPU sweep needs), then of 32; below 64 wide one head
# (under 32) or two, from 64 heads 32 wide (n_head = n_embd / 32)
WIDTHS = (8, 16, 24, 32, 40, 48, 56) + tuple(range(64, 2049, 32))
ASPECT = (8, 128)  # n_embd / n_layer: the range GPT-2 and its descendants use (GPT-2 small: 64)
PREFERRED_ASPECT = 16  # among shapes of about the same N (within TOLERANCE), the one nearest this: depth grows with width
TOLERANCE = 0.3


# ---------------------------------------------------------------------------------------------
# shapes and their FLOPs

@lru_cache(maxsize=None)
def _flops_line(n_embd, vocab_size, block_size, model_args=()):
    """(base, per_layer): flops_per_token = base + n_layer * per_layer, from model.py itself (built on the
    meta device, so no memory and no init time): the count is linear in n_layer."""
    import torch

    from model import GPT, GPTConfig
    counts = []
    for n_layer in (1, 2):
        cfg = GPTConfig(n_layer=n_layer, n_head=heads(n_embd), n_embd=n_embd, vocab_size=vocab_size,
                        block_size=block_size, **({"bias": False, "pad_vocab_to": 64} | dict(model_args)))
        with torch.device("meta"):
            counts.append(GPT(cfg).flops_per_token())
    return counts[0] - (counts[1] - counts[0]), counts[1] - counts[0]


def flops_per_token(shape, vocab_size, block_size, model_args=()):
    """GPT.flops_per_token of the model train.py builds for shape (n_layer, n_embd), biases off and the
    vocabulary padded to 64 as train.py's defaults are."""
    base, per_layer = _flops_line(shape[1], vocab_size, block_size, tuple(sorted(dict(model_args).items())))
    return base + shape[0] * per_layer


def shape_params(shape, vocab_size, block_size, model_args=()):
    """N of a shape: its training FLOPs per token over 6."""
    return flops_per_token(shape, vocab_size, block_size, model_args) / 6


def candidate_shapes():
    """(n_layer, n_embd): 1 to 16 layers, widths in multiples of the head size, sensible aspect ratios."""
    return [(n_layer, n_embd) for n_layer in range(1, MAX_LAYERS + 1) for n_embd in WIDTHS
            if ASPECT[0] <= n_embd / n_layer <= ASPECT[1]]


def pick_shape(n, vocab_size, block_size, model_args=()):
    """The shape whose N is nearest n: among those within 30% of it (e^0.3), the one with the aspect ratio
    nearest 16 (so a ladder's depth and width grow together: a 1-layer model between two 2-layer ones
    trains worse than its size says), else simply the nearest."""
    scored = []
    for s in candidate_shapes():
        gap = abs(math.log(shape_params(s, vocab_size, block_size, model_args) / n))
        scored.append((gap > TOLERANCE, abs(math.log(s[1] / s[0] / PREFERRED_ASPECT)) if gap <= TOLERANCE else 0,
                       gap, s))
    return min(scored)[3]


def heads(n_embd):
    return 1 if n_embd < 32 else 2 if n_embd < 64 else n_embd // 32


def shape_args(shape):
    n_layer, n_embd = shape
    return {"n_layer": n_layer, "n_head": heads(n_embd), "n_embd": n_embd}


def shape_name(shape):
    return f"L{shape[0]}_C{shape[1]}"


def smallest_shape(vocab_size, block_size, model_args=()):
    return min(candidate_shapes(), key=lambda s: shape_params(s, vocab_size, block_size, model_args))


def expected_optimum(c, tokens_per_param=20.0):
    """N* of compute c if D = tokens_per_param N (Chinchilla's 20): N* = sqrt(c / (6 * 20))."""
    return math.sqrt(c / (6 * tokens_per_param))


def ladder(c, vocab_size, block_size, points=5, span=16.0, tokens_per_param=20.0, model_args=()):
    """Shapes for budget c: targets spaced evenly in log N over span, centred on the expected optimum;
    each the shape nearest its target, duplicates dropped. Where the lower end falls below the smallest
    shape, the ladder moves up to start there (it still holds the expected optimum; below that, a
    UserError: the budget is too small for the smallest shape)."""
    centre = expected_optimum(c, tokens_per_param)
    low = smallest_shape(vocab_size, block_size, model_args)
    n_min = shape_params(low, vocab_size, block_size, model_args)
    if centre < n_min:
        raise UserError(f"budget {c:.3g} FLOPs is too small for the smallest shape: its expected optimum is "
                        f"{centre:,.0f} N, below {shape_name(low)}'s {n_min:,.0f}; give at least "
                        f"{6 * tokens_per_param * n_min ** 2:.2g} FLOPs (or lower --tokens_per_param)")
    targets = [centre * span ** ((i / (points - 1) - 0.5) if points > 1 else 0) for i in range(points)]
    targets = [t * max(1.0, n_min / targets[0]) for t in targets]
    shapes = []
    for target in targets:
        s = pick_shape(target, vocab_size, block_size, model_args)
        if s not in shapes:
            shapes.append(s)
    return sorted(shapes, key=lambda s: shape_params(s, vocab_size, block_size, model_args))


def run_plan(c, shape, vocab_size, block_size, tokens_per_step, model_args=()):
    """What budget c buys shape: tokens D = c / flops_per_token and the optimizer steps they take."""
    fpt = flops_per_token(shape, vocab_size, block_size, model_args)
    steps = round(c / fpt / tokens_per_step)
    return {"flops": c, "shape": shape_args(shape), "name": shape_name(shape), "flops_per_token": fpt,
            "params": fpt / 6, "steps": steps, "tokens": steps * tokens_per_step,
            "actual_flops": fpt * steps * tokens_per_step}


def learning_rate(n_embd, base=1e-3, cap=1e-2):
    """config/shakespeare_char.py's rule: 1e-3 at 384 wide, growing as 1/width (muP's rule for Adam on
    hidden layers), capped."""
    return min(cap, base * 384 / n_embd)


def parse_budgets(text, what="--flops"):
    """'1e12,3e12,1e13' -> [1e12, 3e12, 1e13]: finite, positive, distinct."""
    try:
        budgets = [float(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        budgets = []
    if not budgets or not all(math.isfinite(c) and c > 0 for c in budgets) or len(set(budgets)) != len(budgets):
        raise UserError(f"{what}={text!r}: expected distinct positive budgets in FLOPs separated by commas, "
                        f"e.g. {what}=1e12,3e12,1e13")
    return sorted(budgets)


# ---------------------------------------------------------------------------------------------
# fit (a): IsoFLOP profiles

def parabola_minimum(params, losses):
    """Minimum of the parabola through (log N, loss): (N_opt, loss_opt, warning or None)."""
    x, y = np.log(np.asarray(params, float)), np.asarray(losses, float)
    if len(set(x.tolist())) < 3:
        return None, None, "fewer than 3 sizes: no parabola"
    a, b, c0 = np.polyfit(x, y, 2)
    if a <= 0:
        i = int(np.argmin(y))
        return float(np.exp(x[i])), float(y[i]), "the parabola opens downward: the best run is taken as the minimum"
    xm = -b / (2 * a)
    warning = None
    if not x.min() <= xm <= x.max():
        warning = "the minimum lies outside the ladder: widen or move it (--tokens_per_param)"
    return float(np.exp(xm)), float(a * xm * xm + b * xm + c0), warning


def power_law(xs, ys):
    """(k, exponent) of y = k x^exponent, by a straight line through log-log points."""
    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(math.exp(intercept)), float(slope)


def isoflop_fit(runs):
    """Per budget, the parabola's minimum; then N_opt = k C^a and D_opt = k' C^b through them."""
    budgets = []
    for c in sorted({r["flops"] for r in runs}):
        rs = [r for r in runs if r["flops"] == c]
        n_opt, loss_opt, warning = parabola_minimum([r["params"] for r in rs], [r["val_loss"] for r in rs])
        budgets.append({"flops": c, "params": n_opt, "tokens": c / (6 * n_opt) if n_opt else None,
                        "loss": loss_opt, "warning": warning})
    good = [b for b in budgets if b["params"]]
    out = {"budgets": budgets}
    if len(good) >= 2:
        cs = [b["flops"] for b in good]
        out["params_law"] = dict(zip(("k", "exponent"), power_law(cs, [b["params"] for b in good])))
        out["tokens_law"] = dict(zip(("k", "exponent"), power_law(cs, [b["tokens"] for b in good])))
    return out


# ---------------------------------------------------------------------------------------------
# fit (b): the parametric L(N, D)

def _huber(r, delta):
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)), np.where(a <= delta, r, delta * np.sign(r))


def _objective(theta, log_n, log_d, log_l, delta):
    """Sum of Huber(LSE(a - alpha log N, b - beta log D, e) - log L) and its gradient (Chinchilla App. D.2)."""
    a, b, e, alpha, beta = theta
    u = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    m = u.max(axis=0)
    w = np.exp(u - m)
    s = w.sum(axis=0)
    pred = m + np.log(s)
    w = w / s
    h, dh = _huber(pred - log_l, delta)
    grad = np.array([(dh * w[0]).sum(), (dh * w[1]).sum(), (dh * w[2]).sum(),
                     (-dh * w[0] * log_n).sum(), (-dh * w[1] * log_d).sum()])
    return float(h.sum()), grad


EXPONENTS = np.linspace(0.05, 2.0, 20)  # the grid of (alpha, beta) the starts come from


def grid_starts(log_n, log_d, loss, keep=8):
    """Starts for L-BFGS: over a grid of (alpha, beta), the loss is linear in (E, A, B), so a non-negative
    least squares in relative error (close to the log-loss the fit uses) gives each grid point its best
    E, A, B; the keep best points are the starts. Cheaper than the paper's 4,500-point grid over all five
    and as good a cover: a start per basin of (alpha, beta)."""
    from scipy.optimize import nnls
    found = []
    for alpha in EXPONENTS:
        x = np.exp(-alpha * log_n)
        for beta in EXPONENTS:
            m = np.stack([np.ones_like(x), x, np.exp(-beta * log_d)], axis=1) / loss[:, None]
            coef, res = nnls(m, np.ones_like(loss))
            found.append((res, alpha, beta, coef))
    found.sort(key=lambda f: f[0])
    starts = []
    for _, alpha, beta, (e, a, b) in found[:keep]:
        tiny = 1e-6  # a coefficient at 0 has no logarithm: start just above it
        starts.append((math.log(max(a, tiny)), math.log(max(b, tiny)), math.log(max(e, tiny)), alpha, beta))
    return starts


def parametric_fit(params, tokens, losses, delta=1e-3, starts=None, keep=8):
    """E, A, B, alpha, beta of L = E + A / N^alpha + B / D^beta: the Huber loss on log L (Chinchilla's
    appendix D.2, delta 1e-3), minimized by L-BFGS-B from each start (grid_starts' keep best, and any
    given), the best end kept."""
    from scipy.optimize import minimize
    log_n, log_d = np.log(np.asarray(params, float)), np.log(np.asarray(tokens, float))
    loss = np.asarray(losses, float)
    log_l = np.log(loss)
    starts = list(starts or []) + (grid_starts(log_n, log_d, loss, keep) if keep else [])
    best = None
    bounds = [(-20, 60), (-20, 60), (-20, 5), (0, 4), (0, 4)]
    for x0 in starts:
        r = minimize(_objective, np.array(x0, float), args=(log_n, log_d, log_l, delta), jac=True,
                     method="L-BFGS-B", bounds=bounds)
        if best is None or r.fun < best.fun:
            best = r
    a, b, e, alpha, beta = best.x
    return law_constants(math.exp(e), math.exp(a), math.exp(b), alpha, beta) | {"objective": float(best.fun)}


def law_constants(E, A, B, alpha, beta):
    """The constants and what follows from them: N_opt = G (C/6)^a, D_opt = (C/6)^b / G."""
    out = {"E": float(E), "A": float(A), "B": float(B), "alpha": float(alpha), "beta": float(beta)}
    if alpha > 0 and beta > 0:
        out["params_exponent"] = float(beta / (alpha + beta))
        out["tokens_exponent"] = float(alpha / (alpha + beta))
    return out


def parametric_loss(fit, n, d):
    return fit["E"] + fit["A"] / n ** fit["alpha"] + fit["B"] / d ** fit["beta"]


def parametric_optimum(fit, c):
    """(N, D) minimizing the parametric loss at compute c = 6 N D."""
    alpha, beta = fit["alpha"], fit["beta"]
    g = (alpha * fit["A"] / (beta * fit["B"])) ** (1 / (alpha + beta))
    return g * (c / 6) ** (beta / (alpha + beta)), (c / 6) ** (alpha / (alpha + beta)) / g


# ---------------------------------------------------------------------------------------------
# both fits, with bootstrap uncertainties

def bootstrap(runs, samples=100, seed=0, full=None):
    """Std of the exponents over resamples of the runs (with replacement, within each budget); each
    resample's parametric fit starts from the full data's (full, fitted here if not given)."""
    rng = np.random.default_rng(seed)
    groups = [[r for r in runs if r["flops"] == c] for c in sorted({r["flops"] for r in runs})]
    iso, par = {"params": [], "tokens": []}, {k: [] for k in ("E", "A", "B", "alpha", "beta", "params_exponent",
                                                            "tokens_exponent")}
    full = full or parametric_fit(*_columns(runs))
    start = [(math.log(full["A"]), math.log(full["B"]), math.log(full["E"]), full["alpha"], full["beta"])]
    for _ in range(samples):
        sample = [g[i] for g in groups for i in rng.integers(0, len(g), len(g))]
        a = isoflop_fit(sample)
        if "params_law" in a and all(b["params"] for b in a["budgets"]):
            iso["params"].append(a["params_law"]["exponent"])
            iso["tokens"].append(a["tokens_law"]["exponent"])
        p = parametric_fit(*_columns(sample), starts=start, keep=0)
        for k in par:
            if k in p:
                par[k].append(p[k])
    return ({k: float(np.std(v)) if len(v) > 1 else None for k, v in iso.items()},
            {k: float(np.std(v)) if len(v) > 1 else None for k, v in par.items()})


def _columns(runs):
    return [r["params"] for r in runs], [r["tokens"] for r in runs], [r["val_loss"] for r in runs]


def fit_all(runs, samples=100, seed=0):
    """Fit (a) and fit (b) over the runs, each exponent with its bootstrap std."""
    iso = isoflop_fit(runs)
    par = parametric_fit(*_columns(runs))
    iso_std, par_std = bootstrap(runs, samples, seed, par) if samples else ({}, {})
    for key, law in (("params", "params_law"), ("tokens", "tokens_law")):
        if law in iso:
            iso[law]["exponent_std"] = iso_std.get(key)
    par["std"] = par_std
    return {"isoflop": iso, "parametric": par}


# ---------------------------------------------------------------------------------------------
# a fit file, for plan.py and check runs

def load_fit(path):
    """A fit.json that scaling.py wrote, or a one-line UserError saying what it is instead."""
    if not os.path.isfile(path):
        raise UserError(f"--fit={path}: no such file; a sweep writes one: python scaling.py --flops=... "
                        f"--out_dir=DIR makes DIR/fit.json")
    try:
        with open(path, encoding="utf-8") as f:
            fit = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--fit={path} is not a JSON file ({e.__class__.__name__}): give the fit.json scaling.py "
                        f"wrote") from None
    ok = (isinstance(fit, dict) and fit.get("kind") == "scaling_fit" and isinstance(fit.get("parametric"), dict)
          and all(isinstance(fit["parametric"].get(k), (int, float)) for k in ("E", "A", "B", "alpha", "beta"))
          and isinstance(fit.get("settings"), dict))
    if not ok:
        raise UserError(f"--fit={path} is JSON but not a scaling fit (no kind 'scaling_fit' with its parametric "
                        f"constants and settings): give the fit.json scaling.py wrote")
    return fit


def predict(fit, c):
    """For compute c: the IsoFLOP power law's N and D (the parametric optimum where that law is missing),
    the loss the parametric law predicts there, and the parametric optimum itself."""
    par = fit["parametric"]
    pn, pd = parametric_optimum(par, c)
    law = fit["isoflop"].get("params_law")
    n = law["k"] * c ** law["exponent"] if law else pn
    d = c / (6 * n)
    return {"flops": c, "params": n, "tokens": d, "predicted_loss": parametric_loss(par, n, d),
            "parametric_params": pn, "parametric_tokens": pd, "parametric_loss": parametric_loss(par, pn, pd)}


def bytes_per_token(data_dir, split="val"):
    """Mean bytes of text per token of a split (end-of-text counts none), for bits per byte."""
    from shards import open_shard, read_meta, shard_paths
    from tokenizer import from_meta
    tok = from_meta(read_meta(data_dir)["tokenizer"])
    sizes = np.array([len(tok.token_bytes([i])) for i in range(tok.vocab_size)], dtype=np.float64)
    sizes[tok.eot_id] = 0
    total, count = 0.0, 0
    for p in shard_paths(data_dir, split):
        t = np.asarray(open_shard(p))
        total += float(np.bincount(t, minlength=len(sizes))[:len(sizes)] @ sizes)
        count += len(t)
    return total / count if count and total else None


# ---------------------------------------------------------------------------------------------
# pictures

def plot(fit, out_dir):
    """isoflop.png (loss against N, one curve per budget, minima marked) and optimal.png (N_opt and
    D_opt against compute with the fitted lines); the check runs, if any, in black."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs, iso, check = fit["runs"], fit["isoflop"], fit.get("check")
    budgets = sorted({r["flops"] for r in runs})
    colors = plt.cm.viridis(np.linspace(0, 0.85, max(len(budgets), 1)))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for c, color in zip(budgets, colors):
        rs = sorted((r for r in runs if r["flops"] == c), key=lambda r: r["params"])
        x, y = np.array([r["params"] for r in rs]), np.array([r["val_loss"] for r in rs])
        ax.scatter(x, y, color=color, s=18, zorder=3)
        if len(x) >= 3:
            p = np.polyfit(np.log(x), y, 2)
            xs = np.exp(np.linspace(np.log(x.min()), np.log(x.max()), 100))
            ax.plot(xs, np.polyval(p, np.log(xs)), color=color, label=f"C = {c:.2g}")
        b = next(b for b in iso["budgets"] if b["flops"] == c)
        if b["params"]:
            ax.scatter([b["params"]], [b["loss"]], marker="*", s=140, color=color, edgecolor="black", zorder=4)
    if check:
        rs = sorted(check["runs"], key=lambda r: r["params"])
        ax.plot([r["params"] for r in rs], [r["val_loss"] for r in rs], "o--", color="black", ms=4,
                label=f"check C = {check['flops']:.2g}")
        ax.scatter([check["predicted"]["params"]], [check["predicted"]["predicted_loss"]], marker="x", s=80,
                   color="red", zorder=5, label="predicted optimum")
    ax.set_xscale("log")
    ax.set_xlabel("N (training FLOPs per token / 6)")
    ax.set_ylabel("final val loss (nats per token)")
    ax.set_title("IsoFLOP profiles (stars: each parabola's minimum)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "isoflop.png"), dpi=110)
    plt.close(fig)

    good = [b for b in iso["budgets"] if b["params"]]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.0))
    cmax = max([b["flops"] for b in good] + ([check["flops"]] if check else []))
    cs = np.exp(np.linspace(np.log(min(b["flops"] for b in good) / 1.5), np.log(cmax * 1.5), 50))
    for ax, key, law, label in ((axes[0], "params", "params_law", "N_opt"), (axes[1], "tokens", "tokens_law", "D_opt")):
        ax.scatter([b["flops"] for b in good], [b[key] for b in good], color="tab:blue", zorder=3,
                   label="IsoFLOP minima")
        if law in iso:
            k, e = iso[law]["k"], iso[law]["exponent"]
            std = iso[law].get("exponent_std")
            ax.plot(cs, k * cs ** e, color="tab:blue",
                    label=f"fit (a): {label} ∝ C^{e:.2f}" + (f" ± {std:.2f}" if std is not None else ""))
        par = fit["parametric"]
        if "params_exponent" in par:
            ax.plot(cs, [parametric_optimum(par, c)[0 if key == "params" else 1] for c in cs], "--", color="tab:orange",
                    label=f"fit (b): {label} ∝ C^{par[key + '_exponent']:.2f}")
        if check and check.get("measured", {}).get(key):
            ax.scatter([check["flops"]], [check["measured"][key]], marker="s", color="black", zorder=4,
                       label="check: measured")
            ax.scatter([check["flops"]], [check["predicted"][key]], marker="x", s=80, color="red", zorder=5,
                       label="check: predicted")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "optimal.png"), dpi=110)
    plt.close(fig)

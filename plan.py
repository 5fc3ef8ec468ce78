"""
Compute-optimal planning: how big a model, trained on how many tokens, for a budget.

    python plan.py --flops 3.2e17                     # a compute budget
    python plan.py --tokens 1e9                       # the data you have
    python plan.py --params 124e6                     # the model you want
    python plan.py --hours 8 --tokens_per_sec 5e5 --measured_params 124e6   # a time budget, from bench.py
    python plan.py --fit out/scaling/fit.json --flops 1e15   # with the scaling laws measured on your data (scaling.py)

Uses the Chinchilla fit (Hoffmann et al. 2022, https://arxiv.org/abs/2203.15556, approach 3):
    L(N, D) = E + A / N^alpha + B / D^beta,   training compute C = 6 N D
Minimizing L at fixed C gives N_opt = G (C/6)^(beta/(alpha+beta)) and D_opt = (C/6)^(alpha/(alpha+beta)) / G,
with G = (alpha A / (beta B))^(1/(alpha+beta)). N counts all parameters, embeddings included.
With --fit, the laws a sweep measured on your data, recipe and tokenizer instead (scaling.py): the IsoFLOP power
law N_opt = k C^a for the size, its parametric L(N, D) for the loss, its shape family and batch for the rest.
"""

import json
import math
from dataclasses import dataclass

import scaling_laws
from configurator import UserError, parse_args, run

# the answers this fit can give with a straight face: a model of at least a few hundred thousand parameters
# (the smallest shape near it still has one) on at least a million tokens, at most ~1000x past the
# largest model and data the paper fitted (16B parameters, 500B tokens): outside, the numbers mean nothing
PARAMS_RANGE, TOKENS_RANGE = (1e5, 1e13), (1e6, 1e15)
# the paper's fitted constants (its equation 10)
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))


@dataclass
class PlanConfig:
    """Print the compute-optimal model size, tokens, shapes, steps and time for a budget."""
    flops: float = 0.0  # training compute budget in FLOPs
    tokens: float = 0.0  # training tokens available
    params: float = 0.0  # model parameters wanted
    hours: float = 0.0  # a time budget; needs --tokens_per_sec and --measured_params (from bench.py)
    tokens_per_sec: float = 0.0  # measured training throughput (bench.py train)
    measured_params: float = 0.0  # the parameter count of the model that throughput was measured on
    batch_tokens: int = 524288  # tokens per optimizer step, for the number of steps
    vocab_size: int = 50257  # vocabulary, for the shapes' parameter counts
    block_size: int = 1024  # context length, for the shapes' parameter counts
    json: bool = False  # print JSON instead of a table
    fit: str = ""  # a fit.json from scaling.py: plan with the laws measured on your data instead of the paper's


def loss(n, d):
    """The fit's predicted loss (nats per token, on the paper's data)."""
    return E + A / n ** ALPHA + B / d ** BETA


def optimal_for_flops(c):
    """(N, D) minimizing the loss at compute c = 6 N D."""
    a, b = BETA / (ALPHA + BETA), ALPHA / (ALPHA + BETA)
    return G * (c / 6) ** a, (c / 6) ** b / G


def flops_for_params(n):
    """The compute at which n parameters is compute-optimal (inverse of optimal_for_flops)."""
    return 6 * (n / G) ** ((ALPHA + BETA) / BETA)


def flops_for_tokens(d):
    return 6 * (d * G) ** ((ALPHA + BETA) / ALPHA)


def gpt_params(n_layer, n_embd, vocab_size, block_size):
    """Parameters of the GPT-2 model in model.py (biases on, tied embedding)."""
    per_layer = 12 * n_embd ** 2 + 13 * n_embd
    return n_layer * per_layer + (vocab_size + block_size) * n_embd + 2 * n_embd


def shapes_near(n, vocab_size, block_size, count=5):
    """(n_layer, n_head, n_embd, params) close to n parameters: heads of 64, width 32-128 x depth
    (the usual aspect ratios of GPT-2 and its descendants)."""
    found = []
    for n_layer in range(2, 49):
        for n_embd in range(64, 4097, 64):
            if 32 <= n_embd / n_layer <= 128:
                p = gpt_params(n_layer, n_embd, vocab_size, block_size)
                found.append((abs(math.log(p / n)), n_layer, n_embd // 64, n_embd, p))
    return [f[1:] for f in sorted(found)[:count]]


def check_options(cfg):
    """Every number finite and in range, so the arithmetic below cannot overflow into a traceback."""
    for key in ("flops", "tokens", "params", "hours", "tokens_per_sec", "measured_params"):
        x = getattr(cfg, key)
        if not (math.isfinite(x) and x >= 0):
            raise UserError(f"--{key} {x}: must be a finite number, at least 0 (0: not given)")
    for key in ("batch_tokens", "vocab_size", "block_size"):
        if getattr(cfg, key) < 1:
            raise UserError(f"--{key} {getattr(cfg, key)}: must be at least 1")


def plan(cfg):
    check_options(cfg)
    if cfg.fit:
        return plan_from_fit(cfg)
    given = [k for k in ("flops", "tokens", "params", "hours") if getattr(cfg, k) > 0]
    if len(given) != 1:
        raise UserError("give exactly one of --flops, --tokens, --params or --hours (a positive number)")
    flops_per_sec = 6 * cfg.measured_params * cfg.tokens_per_sec if cfg.tokens_per_sec and cfg.measured_params else 0
    if cfg.hours and not flops_per_sec:
        raise UserError("--hours needs --tokens_per_sec and --measured_params (the model they were measured on)")
    c = {"flops": lambda: cfg.flops, "tokens": lambda: flops_for_tokens(cfg.tokens),
         "params": lambda: flops_for_params(cfg.params), "hours": lambda: flops_per_sec * cfg.hours * 3600}
    try:
        c = c[given[0]]()
        n, d = optimal_for_flops(c)
        ok = (all(math.isfinite(x) for x in (c, n, d, d / n)) and PARAMS_RANGE[0] <= n <= PARAMS_RANGE[1]
              and TOKENS_RANGE[0] <= d <= TOKENS_RANGE[1])
    except (OverflowError, ZeroDivisionError):
        ok = False
    if not ok:
        raise UserError(f"--{given[0]} {getattr(cfg, given[0]):g}: too far outside the fit's range to compute "
                        f"(it was fitted on 70M-16B parameters and 5B-500B tokens; this answers for "
                        f"{PARAMS_RANGE[0]:.0e}-{PARAMS_RANGE[1]:.0e} parameters and {TOKENS_RANGE[0]:.0e}-"
                        f"{TOKENS_RANGE[1]:.0e} tokens)")
    out = {"flops": c, "params": n, "tokens": d, "tokens_per_param": d / n, "predicted_loss": loss(n, d),
           "steps": math.ceil(d / cfg.batch_tokens), "batch_tokens": cfg.batch_tokens,
           "shapes": [dict(zip(("n_layer", "n_head", "n_embd", "params"), s))
                      for s in shapes_near(n, cfg.vocab_size, cfg.block_size)]}
    if flops_per_sec:  # achieved FLOP/s carry over between sizes better than tokens/s do
        out["hours"] = c / flops_per_sec / 3600
    return out


def plan_from_fit(cfg):
    """The plan from a sweep's fit: size and tokens from its IsoFLOP power laws, the loss from its parametric
    law, a shape from its ladder's shape family, steps at its batch (or --batch_tokens, if given)."""
    fit = scaling_laws.load_fit(cfg.fit)
    given = [k for k in ("flops", "tokens", "params") if getattr(cfg, k) > 0]
    if len(given) != 1 or cfg.hours:
        raise UserError("with --fit, give exactly one of --flops, --tokens or --params (a positive number)")
    law_n, law_d = fit["isoflop"].get("params_law"), fit["isoflop"].get("tokens_law")
    key = given[0]
    try:
        if key == "flops":
            c = cfg.flops
        elif not (law_n and law_d):
            raise UserError(f"{cfg.fit} has no IsoFLOP power law (fewer than 2 budgets had a minimum): give --flops")
        elif key == "params":
            c = (cfg.params / law_n["k"]) ** (1 / law_n["exponent"])
        else:
            c = (cfg.tokens / law_d["k"]) ** (1 / law_d["exponent"])
        p = scaling_laws.predict(fit, c)
        ok = all(math.isfinite(x) and x > 0 for x in (c, p["params"], p["tokens"], p["predicted_loss"]))
    except (OverflowError, ZeroDivisionError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"--{key} {getattr(cfg, key)}: too far outside the range of {cfg.fit} to compute")
    st = fit["settings"]
    model_args = tuple(sorted((st.get("model_args") or {}).items()))
    shape = scaling_laws.pick_shape(p["params"], st["vocab_size"], st["block_size"], model_args)
    batch = cfg.batch_tokens if cfg.batch_tokens != PlanConfig.batch_tokens else st["tokens_per_step"]
    fitted = [min(fit["budgets"]), max(fit["budgets"])]
    return {"fit": cfg.fit, "flops": c, "params": p["params"], "tokens": p["tokens"],
            "tokens_per_param": p["tokens"] / p["params"], "predicted_loss": p["predicted_loss"],
            "parametric": {k: p[f"parametric_{k}"] for k in ("params", "tokens", "loss")},
            "steps": math.ceil(p["tokens"] / batch), "batch_tokens": batch, "block_size": st["block_size"],
            "fitted_flops": fitted, "extrapolation": c / fitted[1], "model_args": dict(model_args),
            "shape": {**scaling_laws.shape_args(shape),
                      "params": scaling_laws.shape_params(shape, st["vocab_size"], st["block_size"], model_args)}}


def print_fit_plan(p):
    s = p["shape"]
    print(f"compute {p['flops']:.3g} FLOPs -> compute-optimal {fmt(p['params'])} parameters (N: FLOPs per token / 6) "
          f"on {fmt(p['tokens'])} tokens ({p['tokens_per_param']:.1f} tokens per parameter), by the IsoFLOP power "
          f"law of {p['fit']}; its parametric law predicts val loss {p['predicted_loss']:.4f}")
    print(f"{p['steps']:,} steps of {p['batch_tokens']:,} tokens")
    print(f"shape: --n_layer={s['n_layer']} --n_head={s['n_head']} --n_embd={s['n_embd']} "
          f"--block_size={p['block_size']}" + "".join(f" --{k}={v}" for k, v in p["model_args"].items())
          + f"    {fmt(s['params'])} N")
    q = p["parametric"]
    print(f"the parametric law's own optimum: {fmt(q['params'])} N on {fmt(q['tokens'])} tokens, loss {q['loss']:.4f}")
    lo, hi = p["fitted_flops"]
    if not lo / 1.01 <= p["flops"] <= hi * 4:
        print(f"note: the fit measured {lo:.3g} to {hi:.3g} FLOPs; {p['flops']:.3g} is an extrapolation "
              f"({p['extrapolation']:.3g}x the largest)")


def fmt(x):
    if abs(x) >= 1e15:
        return f"{x:.3g}"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def main(argv=None):
    cfg = parse_args(PlanConfig, argv, prog="plan.py")
    p = plan(cfg)
    if cfg.json:
        print(json.dumps(p))
        return
    if cfg.fit:
        print_fit_plan(p)
        return
    print(f"compute {p['flops']:.3g} FLOPs -> compute-optimal {fmt(p['params'])} parameters on {fmt(p['tokens'])} "
          f"tokens ({p['tokens_per_param']:.1f} tokens per parameter); the Chinchilla fit predicts loss "
          f"{p['predicted_loss']:.3f} on its data")
    print(f"{p['steps']:,} steps of {p['batch_tokens']:,} tokens"
          + (f", about {p['hours']:.1f} hours at the measured throughput" if "hours" in p else ""))
    print("shapes near that size (heads of 64):")
    for s in p["shapes"]:
        print(f"  --n_layer={s['n_layer']} --n_head={s['n_head']} --n_embd={s['n_embd']}    {fmt(s['params'])} parameters")


if __name__ == "__main__":
    run(main)

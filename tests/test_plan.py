import math

import pytest

from configurator import UserError
from model import GPT, GPTConfig
from plan import PlanConfig, flops_for_params, flops_for_tokens, gpt_params, optimal_for_flops, plan


def test_a_published_choice_320_pflops_gives_about_50m_parameters_and_1_1b_tokens():
    p = plan(PlanConfig(flops=3.2e17))
    assert 45e6 < p["params"] < 55e6 and 1.0e9 < p["tokens"] < 1.2e9
    assert any(s["n_embd"] == 512 and s["n_head"] == 8 for s in p["shapes"])  # the practitioner's width and heads
    assert p["flops"] == pytest.approx(6 * p["params"] * p["tokens"])


def test_budgets_in_params_tokens_and_hours_agree():
    n, d = optimal_for_flops(1e20)
    assert optimal_for_flops(flops_for_params(n))[0] == pytest.approx(n)
    assert optimal_for_flops(flops_for_tokens(d))[1] == pytest.approx(d)
    p = plan(PlanConfig(hours=2, tokens_per_sec=1e5, measured_params=1e8))
    assert p["flops"] == pytest.approx(6 * 1e8 * 1e5 * 7200) and p["hours"] == pytest.approx(2)
    assert p["steps"] == math.ceil(p["tokens"] / 524288)


@pytest.mark.parametrize("n_layer, n_embd", [(8, 512), (6, 256), (12, 768)])
def test_shape_parameter_counts_match_the_model(n_layer, n_embd):
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_embd // 64, n_embd=n_embd, vocab_size=50257, block_size=1024))
    assert gpt_params(n_layer, n_embd, 50257, 1024) == model.get_num_params()


def test_bad_budgets():
    with pytest.raises(UserError, match="exactly one of"):
        plan(PlanConfig(flops=1e18, tokens=1e9))
    with pytest.raises(UserError, match="--hours needs --tokens_per_sec"):
        plan(PlanConfig(hours=3))


def _recipe(**kw):
    from train import TrainConfig
    return TrainConfig(**{**dict(max_iters=5000, eval_interval=500, eval_iters=50, batch_size=32, block_size=1024,
                                 gradient_accumulation_steps=4), **kw})


def test_a_gpu_recipe_on_a_cpu_warns_with_the_days_and_the_cpu_quick_start():
    from metrics import run_flops, slow_run_warning
    flops, steps, evals = run_flops(_recipe(), 1.245e8)  # config/tinystories.py's model: 655M tokens, 11 evals
    assert (steps, evals) == (5000, 11) and flops == pytest.approx(1.245e8 * (655_360_000 + 11 * 2 * 50 * 32768 / 3))
    msg = slow_run_warning(_recipe(), 1.245e8, 17.9e6, "cpu", probe=lambda device, dtype: 7e10)  # ~560 tok/s
    assert msg.startswith("warning: this run needs about 13.7 days on cpu") and "\n" not in msg
    assert "python train.py config/shakespeare_char.py --device=cpu" in msg
    assert slow_run_warning(_recipe(), 1.245e8, 17.9e6, "cpu", probe=lambda device, dtype: 1e12) is None  # 0.95 days
    assert slow_run_warning(_recipe(eval_only=True), 1.245e8, 17.9e6, "cpu", probe=lambda device, dtype: 7e10) is None


def test_on_a_gpu_the_warning_says_how_many_steps_fit_a_day():
    from metrics import slow_run_warning
    msg = slow_run_warning(_recipe(), 1.245e8, 17.9e6, "cuda", "bfloat16", start_iter=1000,
                           probe=lambda device, dtype: 2e11)
    assert "about 3.8 days on cuda" in msg and "a bfloat16 matrix product" in msg
    assert "--max_iters=2039 " in msg  # 4000 steps left (and 9 evals) take 3.85 days: 1039 of them fit a day
    args = msg.split("python plan.py ")[1].split()
    assert plan(PlanConfig(hours=24, tokens_per_sec=float(args[3]), measured_params=float(args[5])))["hours"] == pytest.approx(24)


def test_small_runs_are_not_probed():
    from metrics import slow_run_warning
    def probe(device, dtype):
        raise AssertionError("no probe for a run that cannot take a day")
    assert slow_run_warning(_recipe(max_iters=2000, batch_size=12, block_size=64, gradient_accumulation_steps=1),
                            4.9e6, 0.8e6, "cpu", probe=probe) is None


def test_the_matmul_probe_leaves_the_random_state_alone():
    import torch
    from metrics import matmul_flops_per_sec
    before = torch.get_rng_state()
    assert matmul_flops_per_sec("cpu", n=64, seconds=0.01) > 0
    assert torch.equal(before, torch.get_rng_state())


def _fit_file(tmp_path):
    """A fit.json as scaling.py writes it, from losses made by a known L(N, D) (no training)."""
    import json

    import scaling_laws as sl
    from test_scaling import synthetic_runs
    runs = synthetic_runs()
    fit = {"kind": "scaling_fit", "budgets": sorted({r["flops"] for r in runs}), "runs": runs,
           "settings": {"vocab_size": 66, "block_size": 64, "tokens_per_step": 1024, "model_args": {}},
           **sl.fit_all(runs, samples=0)}
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(fit))
    return str(path), fit


def test_plan_with_a_fit_uses_its_power_law_its_loss_its_shapes_and_its_batch(tmp_path, capsys):
    import json

    import scaling_laws as sl
    from conftest import run_main
    from plan import main
    path, fit = _fit_file(tmp_path)
    law = fit["isoflop"]["params_law"]
    code, out, err = run_main(main, [f"--fit={path}", "--flops=1e15", "--json"], capsys)
    assert code == 0, err
    p = json.loads(out)
    assert p["params"] == pytest.approx(law["k"] * 1e15 ** law["exponent"])
    assert p["params"] * p["tokens"] * 6 == pytest.approx(1e15)
    assert p["predicted_loss"] == pytest.approx(sl.parametric_loss(fit["parametric"], p["params"], p["tokens"]))
    assert p["steps"] == math.ceil(p["tokens"] / 1024)  # the sweep's batch, not the default 524,288
    shape = (p["shape"]["n_layer"], p["shape"]["n_embd"])
    assert shape == sl.pick_shape(p["params"], 66, 64) and p["shape"]["params"] == pytest.approx(p["params"], rel=0.3)
    by_params = json.loads(run_main(main, [f"--fit={path}", f"--params={p['params']}", "--json"], capsys)[1])
    assert by_params["flops"] == pytest.approx(1e15)
    code, out, _ = run_main(main, [f"--fit={path}", "--flops=1e15"], capsys)
    assert code == 0 and "by the IsoFLOP power law of" in out and "--n_layer=" in out and "extrapolation" in out


@pytest.mark.parametrize("content, fragment", [(None, "no such file"), ("[1, 2", "is not a JSON file"),
                                               ('{"kind": "scaling_fit"}', "not a scaling fit")])
def test_plan_refuses_a_fit_file_that_is_not_one_in_one_line(tmp_path, capsys, content, fragment):
    from conftest import assert_one_line_error, run_main
    from plan import main
    path = tmp_path / "fit.json"
    if content is not None:
        path.write_text(content)
    code, _, err = run_main(main, [f"--fit={path}", "--flops=1e15"], capsys)
    assert_one_line_error(code, err, fragment)


def test_without_a_fit_plan_still_uses_the_paper(capsys):
    from conftest import run_main
    from plan import main
    code, out, _ = run_main(main, ["--flops=3.2e17"], capsys)
    assert code == 0 and "Chinchilla fit" in out

import contextlib
import json
import math
import os

import numpy as np
import pytest

import scaling
import scaling_laws as sl
from conftest import assert_one_line_error, run_main, snapshot

TRUE = dict(E=1.2, A=60.0, B=300.0, alpha=0.4, beta=0.35)  # a known L(N, D)


def synthetic_runs(noise=1e-3, seed=0, budgets=(1e12, 3e12, 1e13, 3e13, 1e14), points=7):
    """IsoFLOP ladders (sizes /4 to x4 around each budget's true optimum) with losses from TRUE, times
    1 + noise * a standard normal."""
    rng = np.random.default_rng(seed)
    runs = []
    for c in budgets:
        n_opt, _ = sl.parametric_optimum(TRUE, c)
        for f in np.exp(np.linspace(math.log(1 / 4), math.log(4), points)):
            n = n_opt * f
            d = c / (6 * n)
            runs.append({"flops": c, "params": n, "tokens": d,
                         "val_loss": sl.parametric_loss(TRUE, n, d) * (1 + noise * rng.standard_normal())})
    return runs


def test_the_parametric_fit_recovers_known_constants_from_noisy_losses():
    fit = sl.parametric_fit(*sl._columns(synthetic_runs()))
    assert fit["alpha"] == pytest.approx(TRUE["alpha"], rel=0.03)
    assert fit["beta"] == pytest.approx(TRUE["beta"], rel=0.03)
    assert fit["E"] == pytest.approx(TRUE["E"], rel=0.02)
    assert fit["A"] == pytest.approx(TRUE["A"], rel=0.15) and fit["B"] == pytest.approx(TRUE["B"], rel=0.15)
    assert fit["params_exponent"] == pytest.approx(TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"]), abs=0.01)


def test_the_isoflop_fit_recovers_the_power_laws_of_the_optimum():
    a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])  # N_opt ~ C^a, D_opt ~ C^(1-a)
    iso = sl.isoflop_fit(synthetic_runs())
    assert iso["params_law"]["exponent"] == pytest.approx(a, abs=0.01)
    assert iso["tokens_law"]["exponent"] == pytest.approx(1 - a, abs=0.01)
    for b in iso["budgets"]:  # each parabola's minimum lands near the true optimum
        assert b["warning"] is None
        assert b["params"] == pytest.approx(sl.parametric_optimum(TRUE, b["flops"])[0], rel=0.1)
        assert b["params"] * b["tokens"] * 6 == pytest.approx(b["flops"])


def test_bootstrap_gives_exponents_an_uncertainty_that_grows_with_the_noise():
    quiet = sl.fit_all(synthetic_runs(noise=1e-3), samples=8)
    loud = sl.fit_all(synthetic_runs(noise=3e-2), samples=8)
    q, lo = quiet["isoflop"]["params_law"]["exponent_std"], loud["isoflop"]["params_law"]["exponent_std"]
    assert 0 < q < lo
    assert quiet["parametric"]["std"]["alpha"] is not None


def test_a_parabola_that_opens_downward_or_has_its_minimum_outside_is_flagged():
    n = [1e3, 1e4, 1e5]
    assert "downward" in sl.parabola_minimum(n, [1.9, 2.0, 1.95])[2]
    assert "outside" in sl.parabola_minimum(n + [1e6], [3.0, 2.5, 2.2, 2.1])[2]
    best, loss, warning = sl.parabola_minimum(n, [2.0, 1.8, 2.0])
    assert warning is None and best == pytest.approx(1e4) and loss == pytest.approx(1.8)


@pytest.mark.parametrize("shape, model_args", [((1, 16), ()), ((3, 40), ()), ((4, 128), ()),
                                               ((2, 64), (("mlp", "swiglu"), ("rope", True)))])
def test_the_flop_count_is_model_py_s(shape, model_args):
    from model import GPT, GPTConfig
    args = sl.shape_args(shape)
    model = GPT(GPTConfig(**args, vocab_size=66, block_size=64, bias=False, pad_vocab_to=64, **dict(model_args)))
    assert sl.flops_per_token(shape, 66, 64, model_args) == model.flops_per_token()
    assert args["n_embd"] % args["n_head"] == 0


def test_a_ladder_has_5_sizes_even_in_log_n_around_the_expected_optimum():
    for c, vocab in ((1e11, 66), (1e13, 66), (1e17, 50257)):
        shapes = sl.ladder(c, vocab, 256)
        n = [sl.shape_params(s, vocab, 256) for s in shapes]
        assert len(shapes) == 5 and n == sorted(n)
        assert 8 < n[-1] / n[0] < 32  # about the 16x span
        steps = np.diff(np.log(n))
        assert steps.min() > 0.3 and steps.max() < 1.2  # 2x apart each, give or take the shape family's grain
        assert all(sl.ASPECT[0] <= w / d <= sl.ASPECT[1] and d <= 16 for d, w in shapes)


# ---------------------------------------------------------------------------------------------
# the sweep, end to end on a toy dataset (train.py in-process, so it takes seconds)

TOY = ["--dataset=tiny_char", "--block_size=16", "--batch_size=4", "--eval_iters=2", "--tokens_per_param=1",
       "--min_steps=2", "--bootstrap=3", "--device=cpu", "--compile=False", "--flops=1e8,2e8"]


@pytest.fixture
def in_process(monkeypatch):
    """Run each train.py command in this process (as its command line would), recording its argv."""
    import torch

    import train
    calls = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as --threads=1: tiny models on a busy CPU run several times faster

    def call(argv, cwd=None, stdout=None, stderr=None, env=None):
        assert argv[1].endswith("train.py") and cwd == sl.ROOT
        calls.append(argv[2:])
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stdout):
            try:
                train.main(argv[2:])
            except SystemExit as e:
                return e.code or 0
        return 0
    monkeypatch.setattr(scaling.subprocess, "call", call)
    yield calls
    torch.set_num_threads(threads)


def test_a_toy_sweep_trains_every_ladder_fits_plots_and_checks(data_root, tmp_path, in_process, capsys):
    out = tmp_path / "sweep"
    code, stdout, err = run_main(scaling.main, TOY + [f"--data_root={data_root}", f"--out_dir={out}",
                                                      "--check_flops=4e8"], capsys)
    assert code == 0, err
    fit = json.loads((out / "fit.json").read_text())
    assert fit["kind"] == "scaling_fit" and sorted({r["flops"] for r in fit["runs"]}) == [1e8, 2e8]
    n = len(fit["runs"])  # tiny shapes are coarse: a toy ladder may hold 4 distinct sizes, not 5
    assert all(len([r for r in fit["runs"] if r["flops"] == c]) >= 4 for c in (1e8, 2e8))
    assert len(in_process) == n + len(fit["check"]["runs"])
    for r in fit["runs"]:  # each an ordinary run in its own folder, for exactly its budget's tokens
        run_dir = out / f"{r['flops']:.3g}" / r["name"]
        assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "ckpt.pt").is_file()
        assert r["tokens"] == r["steps"] * 4 * 16
        assert r["actual_flops"] == pytest.approx(r["flops"], rel=0.5 / r["steps"] + 1e-9)
        assert r["actual_flops"] == pytest.approx(6 * r["params"] * r["tokens"])
        assert r["bits_per_byte"] == pytest.approx(r["val_loss"] / math.log(2), rel=0.01)  # characters: ~1 byte
    argv = in_process[0]
    assert "--max_iters=" + str(fit["runs"][0]["steps"]) in argv and "--lr_decay_iters=" + str(fit["runs"][0]["steps"]) in argv
    assert "--dropout=0.0" in argv and "--init_from=resume" not in argv
    assert all(k in fit["isoflop"] for k in ("budgets", "params_law", "tokens_law"))
    assert (out / "isoflop.png").stat().st_size > 1000 and (out / "optimal.png").stat().st_size > 1000
    check = json.loads((out / "check.json").read_text())
    assert check["flops"] == 4e8 and 1 <= len(check["runs"]) <= 3
    assert math.isfinite(check["params_error_pct"]) and math.isfinite(check["loss_error_pct"])
    assert "check at 4e+08" in stdout and "fit (b): L =" in stdout


def test_an_interrupted_sweep_skips_finished_runs_and_resumes_the_unfinished(data_root, tmp_path, in_process,
                                                                           capsys):
    out = tmp_path / "sweep"
    argv = TOY + [f"--data_root={data_root}", f"--out_dir={out}", "--flops=1e8"]
    assert run_main(scaling.main, argv, capsys)[0] == 0
    dirs = sorted(p.parent for p in out.glob("*/*/result.json"))
    assert len(in_process) == len(dirs) >= 4
    finished = {d: os.stat(d / "result.json").st_mtime_ns for d in dirs[1:]}
    os.remove(dirs[0] / "result.json")  # as if killed after its last checkpoint, before its result
    in_process.clear()
    code, _, err = run_main(scaling.main, argv, capsys)
    assert code == 0, err
    assert len(in_process) == 1 and "--init_from=resume" in in_process[0]
    assert f"--out_dir={dirs[0]}" in in_process[0]
    assert (dirs[0] / "result.json").is_file()
    assert all(os.stat(d / "result.json").st_mtime_ns == t for d, t in finished.items())


def test_one_real_train_subprocess_runs_and_its_result_is_read(data_root, tmp_path):
    """The sweep's command line for train.py, run as a real subprocess once."""
    cfg = scaling.ScalingConfig(dataset="tiny_char", data_root=data_root, out_dir=str(tmp_path), block_size=16,
                                batch_size=4, eval_iters=2, min_steps=2, device="cpu", compile=False, threads=1)
    st = scaling.settings(cfg, 66)
    r = scaling.planned_run(cfg, st, 1e8, (1, 16), 50000)
    result = scaling.train_one(r, 1.0, scaling.worker_envs(cfg, 0)[0], log=lambda msg: None)
    assert result["steps"] == r["steps"] and math.isfinite(result["val_loss"])
    assert json.loads((tmp_path / "1e+08" / "L1_C16" / "result.json").read_text())["val_loss"] == result["val_loss"]


@pytest.mark.parametrize("extra, fragments", [
    (["--flops=1e3"], ["too small for the smallest shape", "give at least"]),
    (["--flops=1e8", "--min_steps=50"], ["too small", "steps", "--min_steps=50"]),
    (["--flops=1e8", "--max_epochs=0.05"], ["dataset tiny_char is too small", "epochs of its"]),
    (["--flops=abc"], ["--flops='abc'", "separated by commas"]),
    (["--flops=1e8,-1"], ["expected distinct positive budgets"]),
    (["--flops=1e8", "--dataset=nothing_here"], ["nothing_here not found"]),
    (["--flops=1e8", "--check_flops=5e7"], ["must be larger than the largest budget"]),
    (["--flops=1e8", "--points=2"], ["at least 3 sizes"]),
])
def test_bad_input_gets_one_line_and_changes_nothing(data_root, tmp_path, in_process, capsys, extra, fragments):
    out = tmp_path / "sweep"
    before = snapshot(data_root)
    code, _, err = run_main(scaling.main, TOY + [f"--data_root={data_root}", f"--out_dir={out}"] + extra, capsys)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists() and not in_process and snapshot(data_root) == before


def test_a_sweep_held_by_another_process_is_refused(data_root, tmp_path, in_process, capsys):
    from shards import hold_lock, release_lock
    out = tmp_path / "sweep"
    out.mkdir()
    lock = hold_lock(str(out / "sweep.lock"), lambda h: h)
    try:
        code, _, err = run_main(scaling.main, TOY + [f"--data_root={data_root}", f"--out_dir={out}"], capsys)
    finally:
        release_lock(lock)
    assert_one_line_error(code, err, "another sweep", "is running in")
    assert not in_process


@pytest.mark.parametrize("content, fragment", [(None, "no such file"), ("{not json", "is not a JSON file"),
                                               ('{"kind": "other"}', "not a scaling fit")])
def test_a_fit_file_that_is_not_one_is_refused(tmp_path, content, fragment):
    from configurator import UserError
    path = tmp_path / "fit.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=fragment):
        sl.load_fit(str(path))


def test_a_run_stopped_half_way_resumes_from_its_checkpoint_to_the_same_loss(data_root, tmp_path, in_process,
                                                                            capsys, monkeypatch):
    """A run cut short (its checkpoint half-way, no final eval) is resumed with --init_from=resume on the
    next sweep and ends where an unbroken run ends."""
    argv = TOY + [f"--data_root={data_root}", "--flops=1e8", "--points=3", "--bootstrap=0"]
    assert run_main(scaling.main, argv + [f"--out_dir={tmp_path / 'whole'}"], capsys)[0] == 0
    whole = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "whole").glob("*/*/result.json")}
    real_call = scaling.subprocess.call

    def cut_short(cmd, **kw):  # the first run stops at half its steps, as a kill after a checkpoint would
        if len(in_process) == len(whole):
            steps = next(a for a in cmd if a.startswith("--max_iters=")).split("=")[1]
            cmd = [a if a != f"--max_iters={steps}" else f"--max_iters={int(steps) // 2}" for a in cmd]
        return real_call(cmd, **kw)
    monkeypatch.setattr(scaling.subprocess, "call", cut_short)
    code, _, err = run_main(scaling.main, argv + [f"--out_dir={tmp_path / 'cut'}"], capsys)
    assert_one_line_error(code, err, "ended without an eval at step")
    monkeypatch.setattr(scaling.subprocess, "call", real_call)
    in_process.clear()
    code, _, err = run_main(scaling.main, argv + [f"--out_dir={tmp_path / 'cut'}"], capsys)
    assert code == 0, err
    assert "--init_from=resume" in in_process[0] and not any("--init_from=resume" in c for c in in_process[1:])
    cut = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "cut").glob("*/*/result.json")}
    assert cut.keys() == whole.keys()
    for name in whole:
        assert cut[name]["val_loss"] == pytest.approx(whole[name]["val_loss"], abs=1e-4), name


def test_on_several_gpus_runs_go_side_by_side_one_per_gpu(data_root, tmp_path, capsys, monkeypatch):
    """--gpus=2: two workers, each run with its own CUDA_VISIBLE_DEVICES; results in ladder order."""
    import threading
    import time
    seen, running, most = [], [0], [0]
    lock = threading.Lock()

    def fake_train(cmd, cwd=None, stdout=None, stderr=None, env=None):  # writes what train.py's final eval would
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        args = dict(a[2:].split("=", 1) for a in cmd[2:])
        steps, n_embd = int(args["max_iters"]), int(args["n_embd"])
        with open(os.path.join(args["out_dir"], "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"iter": steps, "train_loss": 3.0, "val_loss": 3.0 + (math.log(n_embd) - 3) ** 2}) + "\n")
        with lock:
            seen.append(env["CUDA_VISIBLE_DEVICES"])
            running[0] -= 1
        return 0
    monkeypatch.setattr(scaling.subprocess, "call", fake_train)
    code, out, err = run_main(scaling.main, TOY + [f"--data_root={data_root}", f"--out_dir={tmp_path}", "--gpus=2",
                                                   "--bootstrap=0"], capsys)
    assert code == 0, err
    assert sorted(set(seen)) == ["0", "1"] and most[0] == 2 and "on 2 GPUs side by side" in out
    fit = json.loads((tmp_path / "fit.json").read_text())
    for c in (1e8, 2e8):  # in ladder order, whichever GPU finished first
        n = [r["params"] for r in fit["runs"] if r["flops"] == c]
        assert len(n) >= 4 and n == sorted(n)

"""Training that survives: kill -9 anywhere and resume bit for bit, signals, bad steps, pre-flight checks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import checkpoint
from configurator import UserError
from conftest import ROOT, read_metrics, tiny_train_config
from shards import write_shard
from train import TrainConfig, train

# steps 1..16, a checkpoint every 4; dropout on, so the random state has to come back too
ARGS = dict(max_iters=16, lr_decay_iters=16, eval_interval=4, dropout=0.1, sample_tokens=0, plot=False)

# runs train.py's main in a subprocess that SIGKILLs itself at a chosen moment
KILLER = """
import os, sys, signal
sys.path.insert(0, {root!r})
import torch, train
mode, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "step":                       # at the start of step n
    real = train.get_lr
    def get_lr(it, cfg):
        calls[0] += 1
        if calls[0] == n:
            die()
        return real(it, cfg)
    train.get_lr = get_lr
elif mode in ("eval", "term-eval"):     # after the n-th batch of evals: kill -9, or SIGTERM
    real = train.evaluate
    def evaluate(*a, should_stop=None, **k):
        def stop():
            calls[0] += 1
            if calls[0] == n:
                die() if mode == "eval" else os.kill(os.getpid(), signal.SIGTERM)
            return should_stop()
        return real(*a, should_stop=stop, **k)
    train.evaluate = evaluate
elif mode == "term-step":                # SIGTERM at the start of step n
    real = train.get_lr
    def get_lr(it, cfg):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(it, cfg)
    train.get_lr = get_lr
else:                                    # half way through writing the n-th checkpoint
    real = torch.save
    def save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == n:
            f.write(b"half a checkpoint")
            f.flush()
            die()
        return real(obj, f, *a, **k)
    torch.save = save
train.main(sys.argv[3:])
"""


def cli_args(data_root, out_dir, **kw):
    cfg = tiny_train_config(data_root, out_dir, **{**ARGS, **kw})
    return [f"--{k}={v}" for k, v in vars(cfg).items() if v is not None]


def losses(out_dir):
    return [(e["iter"], e["loss"]) for e in read_metrics(out_dir) if "loss" in e]


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """The out_dir of the uninterrupted run."""
    out = tmp_path_factory.mktemp("full")
    train(tiny_train_config(data_root, out, **ARGS))
    return out


@pytest.fixture(scope="module")
def uninterrupted(reference):
    return losses(reference)


@pytest.mark.parametrize("mode, n", [("step", 3), ("step", 11), ("save", 3)],
                         ids=["before the first checkpoint", "between checkpoints", "during a checkpoint write"])
def test_kill_9_then_resume_equals_uninterrupted(data_root, tmp_path, uninterrupted, mode, n):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=ROOT))
    r = subprocess.run([sys.executable, str(script), mode, str(n), *cli_args(data_root, tmp_path / "run")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    if mode == "save":  # the third write was ckpt.pt at step 4 (after ckpt.pt at 0 and best.pt at 4)
        assert os.path.exists(tmp_path / "run" / "ckpt.pt.tmp")
        assert checkpoint.load(str(tmp_path / "run" / "ckpt.pt"))["iter_num"] == 0
    overrides = {"init_from": "resume", "out_dir": str(tmp_path / "run")}
    train(TrainConfig(**overrides), overrides)
    assert losses(tmp_path / "run") == uninterrupted  # bit for bit
    assert not os.path.exists(tmp_path / "run" / "ckpt.pt.tmp")


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data_root, tmp_path, uninterrupted):
    out = tmp_path / "run"
    args = cli_args(data_root, out, max_iters=100000, lr_decay_iters=16, eval_interval=1000)
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists() or len(losses(out)) < 3:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "SIGTERM: saving a checkpoint" in stdout
    stopped_at = checkpoint.load(str(out / "ckpt.pt"))["iter_num"]
    assert f"stopped at step {stopped_at}" in stdout and stopped_at == losses(out)[-1][0]


def test_sigterm_checkpoint_resumes_exactly(data_root, tmp_path, uninterrupted, monkeypatch):
    # the same in-process: a SIGTERM arriving during step 6 stops after it; resume finishes the run
    import train as train_module
    real = train_module.get_lr

    def get_lr(it, cfg):
        if it == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(it, cfg)
    monkeypatch.setattr(train_module, "get_lr", get_lr)
    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or configurator.run's if an earlier test ran a main()
    result = train(tiny_train_config(data_root, tmp_path, **ARGS))
    assert result["stopped_by"] == signal.SIGTERM and result["iter_num"] == 6
    monkeypatch.setattr(train_module, "get_lr", real)
    overrides = {"init_from": "resume", "out_dir": str(tmp_path)}
    train(TrainConfig(**overrides), overrides)
    assert losses(tmp_path) == uninterrupted
    assert signal.getsignal(signal.SIGTERM) == before  # handlers are put back


def corrupt_loss(monkeypatch, bad_calls, factor):
    """Multiply the training loss by `factor` on the given training forward calls (1-based)."""
    import model
    real, calls = model.GPT.forward, [0]

    def forward(self, idx, targets=None, cache=None, **kw):
        logits, loss = real(self, idx, targets, cache, **kw)
        if self.training and targets is not None:
            calls[0] += 1
            if calls[0] in bad_calls:
                loss = loss * factor
        return logits, loss
    monkeypatch.setattr(model.GPT, "forward", forward)


def test_a_nan_step_is_skipped(data_root, tmp_path, monkeypatch, capsys):
    corrupt_loss(monkeypatch, {6}, float("nan"))
    train(tiny_train_config(data_root, tmp_path, **ARGS))
    events = read_metrics(tmp_path)
    assert [e["iter"] for e in events if "skipped" in e] == [6]
    assert "step 6: skipped (non-finite loss)" in capsys.readouterr().out
    assert all(np.isfinite(e["loss"]) for e in events if "loss" in e and "skipped" not in e)
    ckpt = checkpoint.load(str(tmp_path / "ckpt.pt"))
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_a_loss_spike_is_skipped(data_root, tmp_path, monkeypatch):
    corrupt_loss(monkeypatch, {30}, 100.0)
    train(tiny_train_config(data_root, tmp_path, **{**ARGS, "max_iters": 32, "lr_decay_iters": 32, "eval_interval": 8}))
    skipped = [e for e in read_metrics(tmp_path) if "skipped" in e]
    assert [e["iter"] for e in skipped] == [30] and "loss spike" in skipped[0]["skipped"]


def test_repeated_bad_steps_roll_back_and_halve_the_learning_rate(data_root, tmp_path, monkeypatch, capsys):
    corrupt_loss(monkeypatch, {6, 7, 8}, float("inf"))
    result = train(tiny_train_config(data_root, tmp_path, **ARGS))
    assert result["iter_num"] == 16
    events = read_metrics(tmp_path)
    rollback = [e for e in events if "rollback_from" in e]
    assert rollback == [{"iter": 4, "rollback_from": 8, "lr_scale": 0.5}]
    assert "rolled back to step 4" in capsys.readouterr().out
    assert checkpoint.load(str(tmp_path / "ckpt.pt"))["lr_scale"] == 0.5
    # after the rollback, steps 5..16 are trained (again) and logged
    after = [e for e in events if "loss" in e and "skipped" not in e and e["iter"] > 4][-12:]
    assert [e["iter"] for e in after] == list(range(5, 17))


def test_keep_last_n_checkpoints(data_root, tmp_path):
    train(tiny_train_config(data_root, tmp_path, **{**ARGS, "keep_last_n": 2}))
    kept = sorted(f for f in os.listdir(tmp_path) if f.startswith("ckpt_"))
    assert kept == ["ckpt_0000012.pt", "ckpt_0000016.pt"]
    assert checkpoint.load(str(tmp_path / kept[0]))["iter_num"] == 12
    assert (tmp_path / "loss.png").exists() is False  # plot=False in ARGS


def test_preflight_catches_bad_data_and_too_big_a_batch(data_root, tmp_path):
    d = tmp_path / "data" / "wrong"
    d.mkdir(parents=True)
    for split in ("train", "val"):
        write_shard(str(d / f"{split}_000000.bin"), np.arange(200) % 100, vocab_size=100)
    chars = "".join(chr(0x4E00 + i) for i in range(65))  # a 66-id char vocabulary, like shakespeare_char
    (d / "meta.json").write_text(json.dumps({"tokenizer": {"kind": "char", "vocab_size": 66, "eot_id": 65, "chars": chars},
                                             "counts": {"train": {"tokens": 200}, "val": {"tokens": 200}}}))
    with pytest.raises(UserError, match="holds token id 99, but the model's vocabulary has 66 ids"):
        train(tiny_train_config(str(tmp_path / "data"), tmp_path / "out", dataset="wrong", block_size=8))
    with pytest.raises(UserError, match="out of memory .*--batch_size=.*--gradient_checkpointing"):
        train(tiny_train_config(data_root, tmp_path / "out2", batch_size=10**9))


def test_gradient_checkpointing_gives_the_same_training(data_root, tmp_path):
    train(tiny_train_config(data_root, tmp_path / "a", **ARGS))
    train(tiny_train_config(data_root, tmp_path / "b", gradient_checkpointing=True, **ARGS))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    # the same steps logged, with the same losses (pytest >= 9.2's approx compares flat sequences only)
    assert [i for i, _ in a] == [i for i, _ in b] and [x for _, x in a] == pytest.approx([x for _, x in b], rel=1e-5)


def test_observability_png_sample_and_grad_norm(data_root, tmp_path, capsys):
    train(tiny_train_config(data_root, tmp_path, max_iters=8, eval_interval=4, sample_tokens=20,
                            sample_prompt="ROMEO:", plot=True))
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert out.count("sample: 'ROMEO:") == 3  # steps 0, 4, 8
    steps = [e for e in read_metrics(tmp_path) if "loss" in e]
    assert all(e["grad_norm"] > 0 for e in steps)


# ---------------------------------------------------------------------------------------------
# stops and kills at any moment, several in one run: the events, best.pt and final weights are the same

def events(out_dir):
    """What a run logged, without the wall-clock fields (time, tokens/s, mfu)."""
    return [{k: v for k, v in e.items() if k not in ("time", "tokens_per_sec", "mfu")} for e in read_metrics(out_dir)]


def weights(path):
    return checkpoint.load(str(path))["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_and_stopped_again_and_again_ends_as_the_uninterrupted_run(data_root, tmp_path, reference):
    # a kill -9 or SIGTERM at random moments: in steps, inside evals, during checkpoint writes, and a stop
    # that lands exactly on an eval step (step 8 here), each followed by a resume on the same out_dir
    import random
    rng = random.Random(20261130)
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=ROOT))
    out = tmp_path / "run"
    stops = [("term-step", 8), ("eval", rng.randint(1, 3)), ("step", rng.randint(2, 5)), ("save", rng.randint(1, 2)),
             ("term-eval", rng.randint(1, 3))]
    args = cli_args(data_root, out)
    for mode, n in stops:
        r = subprocess.run([sys.executable, str(script), mode, str(n), *args], capture_output=True, text=True,
                           timeout=300)
        expected = 128 + signal.SIGTERM if mode.startswith("term") else -signal.SIGKILL
        assert r.returncode == expected, (mode, n, r.stdout[-2000:], r.stderr[-2000:])
        assert "Traceback" not in r.stderr
        args = ["--init_from=resume", f"--out_dir={out}"]
    train(TrainConfig(init_from="resume", out_dir=str(out)), {"init_from": "resume", "out_dir": str(out)})
    assert events(out) == events(reference)  # every step and eval event, in order, with the same numbers
    assert_same_weights(weights(out / "best.pt"), weights(reference / "best.pt"))
    assert_same_weights(weights(out / "ckpt.pt"), weights(reference / "ckpt.pt"))


def test_a_stop_on_an_eval_step_resumes_with_that_eval(data_root, tmp_path, reference, monkeypatch):
    import train as train_module
    real = train_module.get_lr

    def get_lr(it, cfg):
        if it == 7:  # during step 8, an eval step: the stop saves before the eval
            os.kill(os.getpid(), signal.SIGTERM)
        return real(it, cfg)
    monkeypatch.setattr(train_module, "get_lr", get_lr)
    assert train(tiny_train_config(data_root, tmp_path, **ARGS))["iter_num"] == 8
    assert not [e for e in read_metrics(tmp_path) if e.get("iter") == 8 and "val_loss" in e]
    monkeypatch.setattr(train_module, "get_lr", real)
    train(TrainConfig(init_from="resume", out_dir=str(tmp_path)), {"init_from": "resume", "out_dir": str(tmp_path)})
    assert events(tmp_path) == events(reference)
    assert_same_weights(weights(tmp_path / "best.pt"), weights(reference / "best.pt"))


def test_sigterm_during_an_eval_stops_within_one_batch(data_root, tmp_path, reference, monkeypatch):
    import train as train_module
    real, batches = train_module.evaluate, []

    def evaluate(*a, should_stop=None, **k):
        def stop():
            batches.append(1)
            if len(batches) == 105:  # step 0 evaluates 2 x 50 batches; this is the step-4 eval, 5 batches in
                os.kill(os.getpid(), signal.SIGTERM)
            return should_stop()
        return real(*a, should_stop=stop, **k)
    monkeypatch.setattr(train_module, "evaluate", evaluate)
    result = train(tiny_train_config(data_root, tmp_path, **{**ARGS, "eval_iters": 50}))
    assert result["stopped_by"] == signal.SIGTERM and result["iter_num"] == 4
    assert len(batches) == 105  # not one batch more
    monkeypatch.setattr(train_module, "evaluate", real)
    train(TrainConfig(init_from="resume", out_dir=str(tmp_path)), {"init_from": "resume", "out_dir": str(tmp_path)})
    rerun = tmp_path.parent / "rerun"
    train(tiny_train_config(data_root, rerun, **{**ARGS, "eval_iters": 50}))
    assert events(tmp_path) == events(rerun)


# ---------------------------------------------------------------------------------------------
# optimizer overrides on resume, and runs that cannot recover

def test_resume_with_a_new_learning_rate_scales_the_update_by_its_ratio(data_root, tmp_path):
    base = dict(max_iters=4, lr_decay_iters=4, eval_interval=4, decay_lr=False, dropout=0.0)
    train(tiny_train_config(data_root, tmp_path / "run", **base))
    before = weights(tmp_path / "run" / "ckpt.pt")
    updates = {}
    for lr in (1e-3, 3e-3):
        out = tmp_path / f"lr{lr}"
        shutil.copytree(tmp_path / "run", out)
        overrides = {"init_from": "resume", "out_dir": str(out), "max_iters": 5, "learning_rate": lr}
        train(TrainConfig(**overrides), overrides)
        assert checkpoint.load(str(out / "ckpt.pt"))["config"]["learning_rate"] == lr
        after = weights(out / "ckpt.pt")
        updates[lr] = torch.cat([(after[k] - before[k]).flatten() for k in before])
    # AdamW's update (and its decoupled weight decay) is proportional to the learning rate: 3x the rate, 3x
    # the update, up to float32 rounding of the weight differences
    u1, u3 = updates[1e-3], updates[3e-3]
    assert u1.norm() > 0 and (u3 - 3 * u1).norm() / u3.norm() < 1e-4


def test_resume_takes_weight_decay_and_betas_from_the_command_line(data_root, tmp_path):
    train(tiny_train_config(data_root, tmp_path, max_iters=4, lr_decay_iters=4, eval_interval=4))
    overrides = {"init_from": "resume", "out_dir": str(tmp_path), "max_iters": 5, "weight_decay": 0.5,
                 "beta1": 0.8, "beta2": 0.99}
    train(TrainConfig(**overrides), overrides)
    groups = checkpoint.load(str(tmp_path / "ckpt.pt"))["optimizer"]["param_groups"]
    assert {g["weight_decay"] for g in groups} == {0.5, 0.0} and {tuple(g["betas"]) for g in groups} == {(0.8, 0.99)}


def test_a_run_that_cannot_recover_stops_with_one_line_and_its_last_good_checkpoint(data_root, tmp_path, capsys):
    from conftest import assert_one_line_error, run_main
    import train as train_module
    args = [f"--{k}={v}" for k, v in vars(tiny_train_config(data_root, tmp_path, max_iters=300, eval_interval=10,
                                                            learning_rate=1e6, decay_lr=False)).items()
            if v is not None]
    code, out, err = run_main(train_module.main, args, capsys)
    assert_one_line_error(code, err, "keeps failing", "rolling back 5 times", "ckpt.pt is the last good checkpoint")
    assert out.count("rolled back to step 0") == 5
    ckpt = checkpoint.load(str(tmp_path / "ckpt.pt"))
    assert ckpt["iter_num"] == 0 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_after_a_rollback_a_worse_eval_is_never_saved(data_root, tmp_path, monkeypatch, capsys):
    # bad steps 6-8 roll back to step 4; the first eval at step 8 after it is far worse (a diverged model):
    # it must not replace ckpt.pt, but roll back again; the next try is fine and the run ends normally
    import train as train_module
    corrupt_loss(monkeypatch, {6, 7, 8}, float("inf"))
    real, calls = train_module.evaluate, []

    def evaluate(*a, **k):
        out = real(*a, **k)
        calls.append(out["val"])
        if len(calls) == 3:  # evals: step 0, step 4, then step 8 after the rollback
            out = {**out, "val": 50.0}
        return out
    monkeypatch.setattr(train_module, "evaluate", evaluate)
    saved = []
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda obj, path: (saved.append(obj.get("val_loss")), real_save(obj, path)))
    result = train(tiny_train_config(data_root, tmp_path, **ARGS))
    assert result["iter_num"] == 16 and 50.0 not in saved
    rollbacks = [e for e in read_metrics(tmp_path) if "rollback_from" in e]
    assert [(e["iter"], e["rollback_from"]) for e in rollbacks] == [(4, 8), (4, 8)]
    assert "val loss 50.0000, worse than" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# one run per out_dir; nothing of anyone's overwritten or deleted

def test_a_second_run_on_a_busy_out_dir_is_refused_naming_the_first(data_root, tmp_path):
    train(tiny_train_config(data_root, tmp_path, max_iters=4, lr_decay_iters=4, eval_interval=4))
    before = {p: open(p, "rb").read() for p in (tmp_path / "ckpt.pt", tmp_path / "metrics.jsonl")}
    held = checkpoint.lock(str(tmp_path))  # as another process's run would hold it
    try:
        with pytest.raises(UserError, match=f"in use by another run \\(process {os.getpid()} on"):
            overrides = {"init_from": "resume", "out_dir": str(tmp_path), "max_iters": 8}
            train(TrainConfig(**overrides), overrides)
    finally:
        held.close()
    assert {p: open(p, "rb").read() for p in before} == before
    overrides = {"init_from": "resume", "out_dir": str(tmp_path), "max_iters": 8}
    assert train(TrainConfig(**overrides), overrides)["iter_num"] == 8  # the lock went with its holder


@pytest.mark.parametrize("leftover", ["best.pt", "metrics.jsonl", "ckpt_0000100.pt"])
def test_a_new_run_never_starts_over_another_runs_files(data_root, tmp_path, leftover):
    (tmp_path / leftover).write_bytes(b"precious")
    with pytest.raises(UserError, match=f"already holds a run's {leftover}.*no ckpt.pt to resume from"):
        train(tiny_train_config(data_root, tmp_path, max_iters=2))
    assert (tmp_path / leftover).read_bytes() == b"precious"


def test_only_this_programs_files_are_removed(data_root, tmp_path):
    (tmp_path / "notes.tmp").write_text("mine")
    (tmp_path / "ckpt_best_by_hand.pt").write_text("mine too")
    train(tiny_train_config(data_root, tmp_path, **{**ARGS, "keep_last_n": 1}))
    (tmp_path / "ckpt.pt.tmp").write_bytes(b"half a checkpoint")  # as a kill -9 during a write leaves it
    overrides = {"init_from": "resume", "out_dir": str(tmp_path), "max_iters": 20, "keep_last_n": 1}
    train(TrainConfig(**overrides), overrides)
    assert (tmp_path / "notes.tmp").read_text() == "mine" and (tmp_path / "ckpt_best_by_hand.pt").exists()
    assert not (tmp_path / "ckpt.pt.tmp").exists()
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("ckpt_")) == ["ckpt_0000020.pt", "ckpt_best_by_hand.pt"]


def test_a_damaged_checkpoint_is_refused_at_load(data_root, tmp_path):
    train(tiny_train_config(data_root, tmp_path, max_iters=4, lr_decay_iters=4, eval_interval=4))
    path = tmp_path / "ckpt.pt"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 5000] = bytes(5000)
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="ckpt.pt (is damaged|cannot be read|.*damaged)"):
        checkpoint.load(str(path))


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(data_root, tmp_path, monkeypatch):
    import errno
    train(tiny_train_config(data_root, tmp_path, max_iters=4, lr_decay_iters=4, eval_interval=4))
    before = {name: (tmp_path / name).read_bytes() for name in ("ckpt.pt", "best.pt")}

    def full(obj, f, *a, **k):
        f.write(b"part of it")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    overrides = {"init_from": "resume", "out_dir": str(tmp_path), "max_iters": 8}
    with pytest.raises(UserError, match="cannot write checkpoint .*best.pt \\(the previous one is intact\\).*No space"):
        train(TrainConfig(**overrides), overrides)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_resume_skips_metrics_lines_that_are_not_events(data_root, tmp_path):
    train(tiny_train_config(data_root, tmp_path, max_iters=4, lr_decay_iters=4, eval_interval=4))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('[1, 2]\n"a note"\n{"iter": "x"}\n{"iter": 3, "loss": 1.0\n')
    overrides = {"init_from": "resume", "out_dir": str(tmp_path), "max_iters": 6}
    assert train(TrainConfig(**overrides), overrides)["iter_num"] == 6
    assert [e["iter"] for e in read_metrics(tmp_path) if "loss" in e] == [1, 2, 3, 4, 5, 6]

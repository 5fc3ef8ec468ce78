"""Training that survives: kill -9 anywhere and resume bit for bit, signals, bad steps, pre-flight checks."""

import json
import os
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
def uninterrupted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    train(tiny_train_config(data_root, out, **ARGS))
    return losses(out)


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
    result = train(tiny_train_config(data_root, tmp_path, **ARGS))
    assert result["stopped_by"] == signal.SIGTERM and result["iter_num"] == 6
    monkeypatch.setattr(train_module, "get_lr", real)
    overrides = {"init_from": "resume", "out_dir": str(tmp_path)}
    train(TrainConfig(**overrides), overrides)
    assert losses(tmp_path) == uninterrupted
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers are put back


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

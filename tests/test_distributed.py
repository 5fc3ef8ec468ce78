"""torchrun with 2 CPU processes (gloo): the same training as one process with the same global batch."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, read_metrics, tiny_train_config
from train import TrainConfig, train

# 4 micro-batches of 4 per step: one process runs all 4, two processes 2 each
ARGS = dict(max_iters=8, lr_decay_iters=16, eval_interval=4, gradient_accumulation_steps=4, batch_size=4,
            sample_tokens=0, plot=False)


def torchrun(nproc, data_root, out_dir, **kw):
    cfg = tiny_train_config(data_root, out_dir, **{**ARGS, **kw})
    args = [f"--{k}={v}" for k, v in vars(cfg).items() if v is not None]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                        os.path.join(ROOT, "train.py"), *args], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def losses(out_dir):
    return [(e["iter"], e["loss"]) for e in read_metrics(out_dir) if "loss" in e]


def evals(out_dir):
    return [(e["iter"], e["val_loss"]) for e in read_metrics(out_dir) if "val_loss" in e]


def assert_same_curve(a, b):
    assert [i for i, _ in a] == [i for i, _ in b]
    assert [x for _, x in a] == pytest.approx([x for _, x in b], rel=1e-5)


@pytest.fixture(scope="module")
def single(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    train(tiny_train_config(data_root, out, **{**ARGS, "max_iters": 16}))
    return out


def test_ddp_two_processes_equal_one(data_root, tmp_path, single):
    out = torchrun(2, data_root, tmp_path)
    assert "2 processes (DDP)" in out
    assert_same_curve(losses(tmp_path), losses(single)[:8])
    assert_same_curve(evals(tmp_path), evals(single)[:3])
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_resume_with_another_number_of_processes_keeps_the_data_order(data_root, tmp_path, single):
    torchrun(2, data_root, tmp_path)  # steps 1-8 on two processes
    overrides = {"init_from": "resume", "out_dir": str(tmp_path), "max_iters": 16}
    train(TrainConfig(**overrides), overrides)  # steps 9-16 on one
    assert_same_curve(losses(tmp_path), losses(single))


def test_fsdp_two_processes_equal_one(data_root, tmp_path, single):
    # an odd eval_iters: the processes' forwards (collectives under FSDP) must still pair up
    out = torchrun(2, data_root, tmp_path, fsdp=True, eval_iters=3)
    assert "2 processes (FSDP)" in out
    assert_same_curve(losses(tmp_path), losses(single)[:8])
    # an FSDP checkpoint is a full one: it resumes on a single process
    overrides = {"init_from": "resume", "out_dir": str(tmp_path), "max_iters": 16, "fsdp": False}
    train(TrainConfig(**overrides), overrides)
    assert_same_curve(losses(tmp_path), losses(single))


def test_a_mistake_under_torchrun_is_one_line_from_rank_0(data_root, tmp_path):
    cfg = tiny_train_config(data_root, tmp_path, **{**ARGS, "gradient_accumulation_steps": 3})
    args = [f"--{k}={v}" for k, v in vars(cfg).items() if v is not None]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join(ROOT, "train.py"), *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "gradient_accumulation_steps=3 must be a multiple of the number of processes (2)" in ours[0]
    assert not os.path.exists(tmp_path / "ckpt.pt")

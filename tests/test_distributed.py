"""torchrun with 2 CPU processes (gloo): the same training as one process with the same global batch,
and every promise one process makes (exact resume, kills at any moment, a stop on SIGTERM) held by two:
resume on 2 -> 2 (bit-exact), 2 -> 1, 1 -> 2 and FSDP 2 -> 2; a rank killed with kill -9; restarts by
torchrun --max-restarts with --init_from=auto; SIGTERM to the launcher; two nodes over loopback."""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
from conftest import ROOT, read_metrics, tiny_train_config
from loading import load_model
from train import TrainConfig, train

# 4 micro-batches of 4 per step: one process runs all 4, two processes 2 each. Runs on 2 processes and
# on 1 round their sums differently, and a tiny model at this learning rate grows the difference: after
# ~16 steps they part by more than 1e-5, so they are compared over the first 16 (one process: `single`),
# and interrupted 2-process runs against the uninterrupted one (`ddp`), bit for bit, over all 48.
ARGS = dict(max_iters=48, lr_decay_iters=48, eval_interval=8, gradient_accumulation_steps=4, batch_size=4,
            sample_tokens=0, plot=False)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def command(data_root, out_dir, launcher=("--standalone", "--nproc_per_node=2"), **kw):
    cfg = tiny_train_config(data_root, out_dir, **{**ARGS, **kw})
    args = [f"--{k}={v}" for k, v in vars(cfg).items() if v is not None]
    return [sys.executable, "-m", "torch.distributed.run", *launcher, os.path.join(ROOT, "train.py"), *args]


def torchrun(data_root, out_dir, launcher=("--standalone", "--nproc_per_node=2"), **kw):
    r = subprocess.run(command(data_root, out_dir, launcher, **kw), capture_output=True, text=True, timeout=300,
                       env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def start(data_root, out_dir, launcher=("--standalone", "--nproc_per_node=2"), **kw):
    return subprocess.Popen(command(data_root, out_dir, launcher, **kw), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def losses(out_dir):
    return [(e["iter"], e["loss"]) for e in read_metrics(out_dir) if "loss" in e]


def evals(out_dir):
    return [(e["iter"], e["val_loss"]) for e in read_metrics(out_dir) if "val_loss" in e]


def events(out_dir):
    """What a run did, without its timings: every step's loss, every eval, every skip or rollback."""
    keep = ("iter", "loss", "train_loss", "val_loss", "grad_norm", "skipped", "rollback_from", "lr")
    return [{k: e[k] for k in keep if k in e} for e in read_metrics(out_dir)]


def weights(out_dir):
    return checkpoint.load(os.path.join(out_dir, checkpoint.CKPT))["model"]


def assert_exact(a, b):
    """The same events and the same final weights, bit for bit."""
    assert events(a) == events(b)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def assert_same_curve(a, b):
    assert [i for i, _ in a] == [i for i, _ in b]
    assert [x for _, x in a] == pytest.approx([x for _, x in b], rel=1e-5)


def workers(launcher_pid, timeout=60):
    """{rank: pid} of a torchrun launcher's worker processes, once both have started."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = {}
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid != launcher_pid:
                    continue
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
                found[int(env[b"RANK"])] = int(pid)
            except (OSError, ValueError, KeyError, IndexError):
                continue
        if len(found) == 2:
            return found
        time.sleep(0.05)
    raise AssertionError("torchrun's workers did not start")


def wait_for_training(out_dir, proc, steps=1, timeout=120):
    """Until this run (not the one it resumes) has logged a step at or past `steps` (or ended)."""
    started, deadline = time.time(), time.time() + timeout
    path = out_dir / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.stat().st_mtime > started and max((i for i, _ in losses(out_dir)), default=0) >= steps:
            return
        time.sleep(0.01)


def finished_or_saved(out_dir):
    return (out_dir / checkpoint.CKPT).exists()


def finished(out_dir):
    path = out_dir / checkpoint.CKPT
    return path.exists() and checkpoint.load(str(path))["iter_num"] == ARGS["max_iters"]


@pytest.fixture(scope="module")
def single(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    train(tiny_train_config(data_root, out, **{**ARGS, "max_iters": 16}))
    return out


@pytest.fixture(scope="module")
def ddp(data_root, tmp_path_factory):
    """The uninterrupted 2-process run every interrupted one must equal."""
    out = tmp_path_factory.mktemp("ddp")
    stdout = torchrun(data_root, out)
    assert "2 processes (DDP)" in stdout
    return out


def test_ddp_two_processes_equal_one(ddp, single):
    assert_same_curve(losses(ddp)[:16], losses(single))
    assert_same_curve(evals(ddp)[:3], evals(single))
    assert not [f for f in os.listdir(ddp) if f.endswith(".tmp")]
    assert not os.path.exists(ddp / checkpoint.LOCK)  # a clean finish leaves no lock file behind


def test_resume_two_to_two_is_exact_and_two_to_one_continues(data_root, tmp_path, ddp, single):
    half = tmp_path / "half"
    torchrun(data_root, half, max_iters=8)
    on_one = tmp_path / "one"
    shutil.copytree(half, on_one)
    torchrun(data_root, half, init_from="resume", max_iters=48)
    assert_exact(half, ddp)
    overrides = {"init_from": "resume", "out_dir": str(on_one), "max_iters": 16}
    train(TrainConfig(**overrides), overrides)  # another number of processes: the data order continues
    assert_same_curve(losses(on_one), losses(single))


def test_resume_one_to_two(data_root, tmp_path, single):
    train(tiny_train_config(data_root, tmp_path, **{**ARGS, "max_iters": 8}))
    torchrun(data_root, tmp_path, init_from="resume", max_iters=16)
    assert_same_curve(losses(tmp_path), losses(single))


def test_fsdp_resume_two_to_two_and_two_to_one(data_root, tmp_path, single):
    # an odd eval_iters: the processes' forwards (collectives under FSDP) must still pair up
    out = torchrun(data_root, tmp_path, fsdp=True, eval_iters=3, max_iters=8)
    assert "2 processes (FSDP)" in out
    # sharded: ckpt.pt names a folder that each process wrote its part of; sample.py reads it whole
    saved = checkpoint.load(str(tmp_path / checkpoint.CKPT), shards=())
    assert "model" not in saved and "optimizer" not in saved and (tmp_path / saved["sharded"] / ".metadata").exists()
    model, *_ = load_model(str(tmp_path / checkpoint.CKPT), "cpu")
    best = checkpoint.load(str(tmp_path / checkpoint.BEST))["model"]  # best.pt: the weights, gathered
    assert all(torch.equal(t, best[k]) for k, t in model.state_dict().items())
    on_one = tmp_path.parent / (tmp_path.name + "_one")
    shutil.copytree(tmp_path, on_one)
    torchrun(data_root, tmp_path, fsdp=True, eval_iters=3, init_from="resume", max_iters=16)
    assert_same_curve(losses(tmp_path), losses(single))
    overrides = {"init_from": "resume", "out_dir": str(on_one), "max_iters": 16, "fsdp": False}
    train(TrainConfig(**overrides), overrides)  # an FSDP checkpoint resumes on a single process
    assert_same_curve(losses(on_one), losses(single))
    assert [n for n in os.listdir(on_one) if checkpoint.SHARDS.fullmatch(n)] == []  # none left unnamed
    assert len([n for n in os.listdir(tmp_path) if checkpoint.SHARDS.fullmatch(n)]) == 1


def our_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_rank_killed_at_random_moments(data_root, tmp_path, ddp):
    """kill -9 of one worker, twice, each at a random moment (a step, an eval, a checkpoint write):
    the other stops within seconds with one line naming the dead rank, nothing saved is damaged, and
    --init_from=auto continues to the uninterrupted run's events and weights."""
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    for _ in range(2):
        proc = start(data_root, tmp_path, init_from="auto")
        pids = workers(proc.pid)
        resumed_at = checkpoint.load(str(tmp_path / checkpoint.CKPT))["iter_num"] if finished_or_saved(tmp_path) else 0
        wait_for_training(tmp_path, proc, steps=rng.randint(resumed_at + 1, 47))
        time.sleep(rng.uniform(0, 0.05))
        victim = rng.choice([0, 1])
        killed_at = time.time()
        try:
            os.kill(pids[victim], signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate(timeout=120)
        took = time.time() - killed_at
        if proc.returncode == 0 or (finished(tmp_path) and not our_lines(err)):  # it had finished before the kill
            break
        lines = our_lines(err)
        assert len(lines) == 1 and f"rank {victim} (process {pids[victim]}) stopped answering" in lines[0], err[-3000:]
        assert 'train.py", line' not in err, err[-3000:]  # no traceback of ours
        assert took < 60, took
        if os.path.exists(tmp_path / checkpoint.CKPT):
            checkpoint.load(str(tmp_path / checkpoint.CKPT))  # intact: it loads, its checksum holds
    torchrun(data_root, tmp_path, init_from="auto")
    assert_exact(tmp_path, ddp)


def test_torchrun_max_restarts_recovers_with_init_from_auto(data_root, tmp_path, ddp):
    proc = start(data_root, tmp_path, launcher=("--standalone", "--nproc_per_node=2", "--max-restarts=2"),
                 init_from="auto")
    pids = workers(proc.pid)
    wait_for_training(tmp_path, proc, steps=random.randint(1, 40))
    try:
        os.kill(pids[random.choice([0, 1])], signal.SIGKILL)
    except ProcessLookupError:
        pass
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert_exact(tmp_path, ddp)


def test_sigterm_to_the_launcher_saves_one_checkpoint_on_every_rank(data_root, tmp_path, ddp):
    """What a scheduler sends before it takes the machines back: torchrun passes SIGTERM to every
    worker, which finish the step together, save, and exit 143; a resume equals an unbroken run."""
    proc = start(data_root, tmp_path)
    workers(proc.pid)
    wait_for_training(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    if "stopped at step" in out:
        assert out.count("stopped at step") == 1 and "saved" in out
        assert "exitcode  : 143" in err or "exitcode: 143" in err or "SignalException" in err
        assert 'train.py", line' not in err, err[-3000:]
    torchrun(data_root, tmp_path, init_from="resume")
    assert_exact(tmp_path, ddp)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(data_root, out_dir, **kw):
    port = free_port()
    procs = [start(data_root, out_dir, launcher=("--nnodes=2", f"--node_rank={n}", "--nproc_per_node=1",
                                                 "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                                                 "--rdzv_id=test", "--local_addr=127.0.0.1"), **kw)
             for n in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out[-2000:] + err[-3000:]


def test_two_nodes_over_loopback_train_and_resume_as_one_node(data_root, tmp_path, ddp):
    """Two torchrun agents (one process each) meeting through c10d on 127.0.0.1: the same run as two
    processes on one node, resumed across them."""
    two_nodes(data_root, tmp_path, max_iters=8)
    two_nodes(data_root, tmp_path, init_from="resume", max_iters=48)
    assert_exact(tmp_path, ddp)


def test_a_mistake_under_torchrun_is_one_line_from_rank_0(data_root, tmp_path):
    r = subprocess.run(command(data_root, tmp_path, gradient_accumulation_steps=3), capture_output=True, text=True,
                       timeout=300, env=ENV)
    assert r.returncode != 0
    ours = our_lines(r.stderr)
    assert len(ours) == 1 and "gradient_accumulation_steps=3 must be a multiple of the number of processes (2)" in ours[0]
    assert not os.path.exists(tmp_path / "ckpt.pt")


def test_a_sharded_checkpoint_that_cannot_be_written_or_read_is_one_line(tmp_path, monkeypatch):
    """torch.distributed.checkpoint reports a rank's disk error as a CheckpointException (a
    BaseException with a traceback per rank): it becomes one line naming the folder and the fault."""
    import errno
    import warnings

    import torch.distributed.checkpoint as dcp

    import distributed
    from configurator import UserError
    from model import GPT, GPTConfig
    warnings.simplefilter("ignore")  # one process, no process group: what DCP warns about
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64))
    opt = torch.optim.AdamW(model.parameters())
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match="cannot write the sharded checkpoint .*a_file/shards: Not a directory.*intact"):
        distributed.save_sharded(model, opt, str(tmp_path / "a_file" / "shards"))
    distributed.save_sharded(model, opt, str(tmp_path / "shards"))
    real = dcp.FileSystemReader.read_data

    def disk_error(self, *a, **k):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "shards"))
    monkeypatch.setattr(dcp.FileSystemReader, "read_data", disk_error)
    with pytest.raises(UserError, match="cannot read the sharded checkpoint .*Input/output error"):
        distributed.load_sharded(model, opt, str(tmp_path / "shards"))
    monkeypatch.setattr(dcp.FileSystemReader, "read_data", real)
    distributed.load_sharded(model, opt, str(tmp_path / "shards"))

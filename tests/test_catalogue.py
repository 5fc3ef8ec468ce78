"""A catalogue of mistakes and faults, as a hostile new user, a preempting cluster, a full disk and a
colleague starting the same command twice would commit them, against train.py, sample.py, eval.py and
export.py. Each case must end with one `error:` line that names the key or path, a non-zero exit, no
traceback, and every file that existed before byte for byte unchanged. (prepare.py and plan.py have
their own catalogue in test_catalogue_data.py.)"""

import errno
import os
import shutil

import pytest
import torch

import checkpoint
import eval as eval_script
import export as export_script
import sample as sample_script
import train as train_script
from conftest import assert_one_line_error, run_main, snapshot, tiny_train_config

SCRIPTS = {"train": train_script.main, "sample": sample_script.main, "eval": eval_script.main,
           "export": export_script.main}


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory):
    """A finished tiny run: ckpt.pt, best.pt, metrics.jsonl."""
    out = tmp_path_factory.mktemp("catalogue") / "run"
    train_script.train(tiny_train_config(data_root, out, max_iters=4, lr_decay_iters=4, eval_interval=2))
    return out


def train_args(data_root, out_dir, **kw):
    cfg, default = tiny_train_config(data_root, out_dir, max_iters=2, **kw), train_script.TrainConfig()
    return [f"--{k}={v}" for k, v in vars(cfg).items() if v != getattr(default, k)]


def config_file(tmp, text):
    path = tmp / "config.py"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def copy_run(run_dir, tmp, edit=None):
    """A copy of the tiny run whose ckpt.pt went through edit(ckpt) (then saved with a valid checksum)."""
    out = tmp / "copy"
    shutil.copytree(run_dir, out)
    if edit is not None:
        ckpt = checkpoint.load(str(out / "ckpt.pt"))
        edit(ckpt)
        checkpoint.save(ckpt, str(out / "ckpt.pt"))
    return out


def resume(run, *extra):
    return ["--init_from=resume", f"--out_dir={run}", *extra]


def damaged(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 5000] = bytes(5000)
    path.write_bytes(bytes(data))


def raising(err):
    def fail(*a, **k):
        raise OSError(err, os.strerror(err), a[0] if a and isinstance(a[0], str) else None)
    return fail


# each case: (script, make(c) -> (argv, fragments of the error line)); c has data, run, tmp, monkeypatch
CASES = {
    # config files: trusted Python, but its mistakes are still one line
    "config with a syntax error": ("train", lambda c: (
        [config_file(c.tmp, "learning_rate = (\n"), *train_args(c.data, c.tmp / "o")], ["config.py", "line"])),
    "config that raises": ("train", lambda c: (
        [config_file(c.tmp, "x = 1 / 0\n"), *train_args(c.data, c.tmp / "o")], ["config.py", "ZeroDivisionError"])),
    "config in Latin-1": ("train", lambda c: (
        [config_file(c.tmp, b"# caf\xe9\nbatch_size = 4\n"), *train_args(c.data, c.tmp / "o")], ["not UTF-8"])),
    "derived value that raises": ("train", lambda c: (
        [config_file(c.tmp, "weight_decay = lambda c: c.learning_rate / 0\n"), *train_args(c.data, c.tmp / "o")],
        ["weight_decay", "ZeroDivisionError"])),
    "def of a key": ("train", lambda c: (
        [config_file(c.tmp, "def learning_rate(c):\n    return 1e-3\n"), *train_args(c.data, c.tmp / "o")],
        ["defines a function 'learning_rate'"])),
    "unknown key in a config": ("train", lambda c: (
        [config_file(c.tmp, "lerning_rate = 1e-3\n"), *train_args(c.data, c.tmp / "o")],
        ["lerning_rate", "learning_rate"])),
    "config file missing": ("train", lambda c: (["nope.py", *train_args(c.data, c.tmp / "o")], ["nope.py", "not found"])),
    # values
    "unknown key": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--lerning_rate=1"],
                                        ["lerning_rate", "did you mean 'learning_rate'"])),
    "wrong type": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--batch_size=abc"], ["batch_size"])),
    "not a bool": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--compile=maybe"], ["compile"])),
    "negative seed": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--seed=-1"], ["seed=-1"])),
    "seed beyond 64 bits": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), f"--seed={2**64}"], ["seed="])),
    "empty out_dir": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--out_dir="], ["out_dir is empty"])),
    "out_dir is a file": ("train", lambda c: (
        [*train_args(c.data, c.tmp / "o"), f"--out_dir={c.run / 'metrics.jsonl'}"], ["metrics.jsonl", "is a file"])),
    "negative learning rate": ("train", lambda c: (
        [*train_args(c.data, c.tmp / "o"), "--learning_rate=-0.001"], ["learning_rate=-0.001"])),
    "negative grad_clip": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--grad_clip=-1"], ["grad_clip=-1"])),
    "negative weight_decay": ("train", lambda c: (
        [*train_args(c.data, c.tmp / "o"), "--weight_decay=-0.1"], ["weight_decay=-0.1"])),
    "infinite learning rate": ("train", lambda c: (
        [*train_args(c.data, c.tmp / "o"), "--learning_rate=1e400"], ["learning_rate=inf"])),
    "beta2 of 1": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--beta2=1.0"], ["beta2=1.0"])),
    "dropout of 1": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--dropout=1"], ["dropout=1"])),
    "negative max_iters": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--max_iters=-5"], ["max_iters"])),
    "eval_interval 0": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--eval_interval=0"],
                                            ["eval_interval=0"])),
    "heads do not divide": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--n_embd=30", "--n_head=4"],
                                                ["n_embd=30"])),
    "float16 on a CPU": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--dtype=float16"], ["float16"])),
    "unknown device": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--device=tpu"], ["device='tpu'"])),
    "unknown optimizer": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--optimizer=sgd"],
                                              ["optimizer='sgd'"])),
    "unknown init_from": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--init_from=gpt3"],
                                              ["init_from='gpt3'"])),
    "mix weight 1e400": ("train", lambda c: (
        [*train_args(c.data, c.tmp / "o"), "--dataset={'tiny_char': 1e400}"], ["dataset=", "finite numbers"])),
    "negative mix weight": ("train", lambda c: (
        [*train_args(c.data, c.tmp / "o"), "--dataset={'tiny_char': -1}"], ["dataset=", "positive"])),
    "empty mix": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--dataset={}"], ["dataset={}"])),
    "unknown eval task": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--eval_tasks=mmlu"],
                                              ["eval_tasks='mmlu'"])),
    "missing eval task file": ("train", lambda c: (
        [*train_args(c.data, c.tmp / "o"), "--eval_tasks=hellaswag", f"--eval_tasks_file={c.tmp / 'hs.jsonl'}"],
        ["hs.jsonl", "not found"])),
    "missing dataset": ("train", lambda c: ([*train_args(c.data, c.tmp / "o"), "--dataset=nope"],
                                            ["nope", "prepare.py"])),
    "a shard with ids above its header's": ("train", lambda c: (
        train_args(c.data_with_a_bad_shard(), c.tmp / "o"), ["train_000000.bin", "above the largest id"])),
    "a model too big for memory": ("train", lambda c: (
        [*train_args(c.data, c.tmp / "o"), "--n_layer=96", "--n_head=96", "--n_embd=12288"], ["out of memory"])),
    # out_dir: one run each, nothing overwritten
    "new run over a finished run": ("train", lambda c: (train_args(c.data, c.run), ["already holds", "ckpt.pt"])),
    "new run over metrics.jsonl alone": ("train", lambda c: (
        (c.tmp / "o").mkdir() or (c.tmp / "o" / "metrics.jsonl").write_text('{"iter": 0}\n') and
        train_args(c.data, c.tmp / "o"), ["metrics.jsonl", "no ckpt.pt"])),
    "second run on a busy out_dir": ("train", lambda c: (
        c.hold(checkpoint.lock(str(c.run))) and resume(c.run, "--max_iters=6"), ["in use by another run", "process"])),
    "out_dir's parent read-only": ("train", lambda c: (
        c.monkeypatch.setattr(train_script.os, "makedirs", raising(errno.EROFS)) or
        train_args(c.data, c.tmp / "ro" / "o"), ["cannot create out_dir", "Read-only"])),
    # resume
    "resume with no checkpoint": ("train", lambda c: (resume(c.tmp), ["no ckpt.pt"])),
    "resume from an empty ckpt.pt": ("train", lambda c: (
        resume(c.empty_ckpt_dir()), ["cannot read checkpoint", "ckpt.pt"])),
    "resume from a best.pt": ("train", lambda c: (
        resume(c.best_as_ckpt()), ["weights only", "ckpt.pt"])),
    "resume from a damaged ckpt.pt": ("train", lambda c: (resume(c.damaged_run()), ["ckpt.pt", "damaged"])),
    "resume from a pickle": ("train", lambda c: (resume(c.pickled_run()), ["pickled Python objects"])),
    "resume with a malformed saved config": ("train", lambda c: (
        resume(copy_run(c.run, c.tmp, lambda k: k["config"].update(batch_size="many"))),
        ["malformed config", "batch_size"])),
    "resume with an unknown model key": ("train", lambda c: (
        resume(copy_run(c.run, c.tmp, lambda k: k["model_args"].update(n_experts=8))), ["model_args", "n_experts"])),
    "resume with another n_layer": ("train", lambda c: (resume(c.run, "--n_layer=3"), ["n_layer=3"])),
    "resume with another optimizer": ("train", lambda c: (resume(c.run, "--optimizer=muon"), ["optimizer=muon"])),
    # sample.py
    "negative top_k": ("sample", lambda c: ([f"--out_dir={c.run}", "--top_k", "-5"], ["top_k=-5"])),
    "negative temperature": ("sample", lambda c: ([f"--out_dir={c.run}", "--temperature=-1"], ["temperature=-1"])),
    "top_p of 0": ("sample", lambda c: ([f"--out_dir={c.run}", "--top_p=0"], ["top_p=0"])),
    "no samples": ("sample", lambda c: ([f"--out_dir={c.run}", "--num_samples=0"], ["num_samples"])),
    "empty stop string": ("sample", lambda c: ([f"--out_dir={c.run}", "--stop", ""], ["stop string"])),
    "prompt file not UTF-8": ("sample", lambda c: (
        (c.tmp / "p.txt").write_bytes(b"caf\xe9") and [f"--out_dir={c.run}", f"--start=FILE:{c.tmp / 'p.txt'}"],
        ["p.txt", "not UTF-8"])),
    "prompt file missing": ("sample", lambda c: (
        [f"--out_dir={c.run}", f"--start=FILE:{c.tmp / 'none.txt'}"], ["none.txt", "not found"])),
    "sample with no checkpoint": ("sample", lambda c: ([f"--out_dir={c.tmp / 'none'}"], ["none", "does not exist"])),
    "sample an empty ckpt.pt": ("sample", lambda c: ([f"--out_dir={c.empty_ckpt_dir()}"], ["cannot read checkpoint"])),
    "sample a damaged checkpoint": ("sample", lambda c: (
        [f"--out_dir={c.damaged_run() / 'ckpt.pt'}"], ["ckpt.pt", "damaged"])),
    "sample with a seed beyond 64 bits": ("sample", lambda c: ([f"--out_dir={c.run}", f"--seed={2**64}"], ["seed="])),
    "sample on an unknown device": ("sample", lambda c: ([f"--out_dir={c.run}", "--device=tpu"], ["device='tpu'"])),
    # eval.py
    "split as a pattern": ("eval", lambda c: ([f"--out_dir={c.run}", "--split=*"], ["split='*'"])),
    "unknown split": ("eval", lambda c: ([f"--out_dir={c.run}", "--split=test"], ["split='test'"])),
    "negative stride": ("eval", lambda c: ([f"--out_dir={c.run}", "--stride=-1"], ["stride"])),
    "eval with no checkpoint": ("eval", lambda c: ([f"--out_dir={c.tmp / 'none'}"], ["does not exist"])),
    "eval on a missing dataset": ("eval", lambda c: (
        [f"--out_dir={c.run}", "--dataset=nope", f"--data_root={c.data}"], ["nope"])),
    # export.py
    "export over a non-empty directory": ("export", lambda c: (
        [f"--out_dir={c.run}", f"--hf_dir={c.data}"], ["already exists", "--overwrite"])),
    "export to a file": ("export", lambda c: (
        [f"--out_dir={c.run}", f"--hf_dir={c.run / 'metrics.jsonl'}"], ["is a file"])),
    "export with no checkpoint": ("export", lambda c: (
        [f"--out_dir={c.tmp / 'none'}", f"--hf_dir={c.tmp / 'hf'}"], ["does not exist"])),
    "export onto a full disk": ("export", lambda c: (
        c.monkeypatch.setattr("safetensors.torch.save_file", raising(errno.ENOSPC)) or
        [f"--out_dir={c.run}", f"--hf_dir={c.tmp / 'hf'}"], ["No space left"])),
    "export under a read-only parent": ("export", lambda c: (
        c.monkeypatch.setattr("os.makedirs", raising(errno.EACCES)) or
        [f"--out_dir={c.run}", f"--hf_dir={c.tmp / 'hf'}"], ["Permission denied"])),
}


class Context:
    def __init__(self, data, run, tmp, monkeypatch):
        self.data, self.run, self.tmp, self.monkeypatch, self.held = data, run, tmp, monkeypatch, []

    def hold(self, lock):
        self.held.append(lock)
        return True

    def empty_ckpt_dir(self):
        d = self.tmp / "empty"
        d.mkdir()
        (d / "ckpt.pt").write_bytes(b"")
        return d

    def best_as_ckpt(self):
        d = self.tmp / "best"
        d.mkdir()
        shutil.copy(self.run / "best.pt", d / "ckpt.pt")
        return d

    def damaged_run(self):
        d = copy_run(self.run, self.tmp)
        damaged(d / "ckpt.pt")
        return d

    def data_with_a_bad_shard(self):
        """A copy of tiny_char whose train shard has a run of ids past its header's largest."""
        import numpy as np
        from shards import HEADER_BYTES
        root = self.tmp / "data"
        shutil.copytree(os.path.join(self.data, "tiny_char"), root / "tiny_char")
        path = root / "tiny_char" / "train_000000.bin"
        tokens = np.memmap(path, dtype=np.uint16, mode="r+", offset=HEADER_BYTES)
        tokens[len(tokens) // 2:len(tokens) // 2 + 2000] = 60000
        tokens.flush()
        return root

    def pickled_run(self):
        d = self.tmp / "pickled"
        d.mkdir()
        torch.save({"model": {}, "evil": Context}, d / "ckpt.pt")
        return d


@pytest.mark.parametrize("case", list(CASES))
def test_catalogue(case, data_root, run_dir, tmp_path, monkeypatch, capsys):
    if case == "float16 on a CPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    script, make = CASES[case]
    c = Context(data_root, run_dir, tmp_path, monkeypatch)
    argv, fragments = make(c)
    before = snapshot(data_root, run_dir, tmp_path)
    try:
        code, out, err = run_main(SCRIPTS[script], [str(a) for a in argv], capsys)
    finally:
        for lock in c.held:
            lock.close()
        monkeypatch.undo()
    assert_one_line_error(code, err, *fragments)
    after = snapshot(data_root, run_dir, tmp_path)
    unchanged = {p: b for p, b in after.items() if p in before and not p.endswith(checkpoint.LOCK)}
    assert unchanged == {p: b for p, b in before.items() if p in unchanged}, "a file that was there changed"
    assert set(before) - {p for p in before if p.endswith(checkpoint.LOCK)} <= set(after), "a file was deleted"
    looks_complete = [p for p in set(after) - set(before) if p.endswith(("ckpt.pt", "best.pt", "model.safetensors",
                                                                         "meta.json", "config.json"))]
    assert not looks_complete, looks_complete


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 60

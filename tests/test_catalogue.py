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

import bench as bench_script
import checkpoint
import eval as eval_script
import export as export_script
import sample as sample_script
import train as train_script
from conftest import FullDisk, assert_one_line_error, run_main, snapshot, tiny_train_config

SCRIPTS = {"train": train_script.main, "sample": sample_script.main, "eval": eval_script.main,
           "export": export_script.main, "bench": bench_script.main}


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory):
    """A finished tiny run: ckpt.pt, best.pt, metrics.jsonl."""
    out = tmp_path_factory.mktemp("catalogue") / "run"
    train_script.train(tiny_train_config(data_root, out, max_iters=4, lr_decay_iters=4, eval_interval=2))
    return out


def train_args(data_root, out_dir, **kw):
    cfg, default = tiny_train_config(data_root, out_dir, **{"max_iters": 2, **kw}), train_script.TrainConfig()
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


def weights(fn):
    """An edit of a checkpoint that replaces its first weight matrix by fn(it)."""
    def edit(k):
        name = "transformer.wte.weight"
        k["model"][name] = fn(k["model"][name])
    return edit


def sample_ckpt(d):
    return [f"--out_dir={d / 'ckpt.pt'}", "--max_new_tokens=2", "--num_samples=1"]


HS_OK = {"activity_label": "Cooking", "ctx_a": "A man", "ctx_b": "cuts", "endings": ["a", "b", "c", "d"], "label": 0}


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
    # FSDP's sharded checkpoints: ckpt.pt names a folder that torch.distributed.checkpoint wrote
    "sample a sharded ckpt.pt whose .metadata runs code": ("sample", lambda c: (
        [f"--out_dir={c.sharded_run('evil') / 'ckpt.pt'}"], [".metadata", "pickled Python objects"])),
    "resume from a sharded ckpt.pt whose .metadata runs code": ("train", lambda c: (
        resume(c.sharded_run("evil")), [".metadata", "pickled Python objects"])),
    "sample a sharded ckpt.pt whose shards are cut short": ("sample", lambda c: (
        [f"--out_dir={c.sharded_run('cut') / 'ckpt.pt'}"], ["cannot read the sharded checkpoint", "shards_"])),
    "resume from a sharded ckpt.pt whose shards are gone": ("train", lambda c: (
        resume(c.sharded_run("gone")), ["shards_", "missing or incomplete"])),
    "resume with a malformed saved config": ("train", lambda c: (
        resume(copy_run(c.run, c.tmp, lambda k: k["config"].update(batch_size="many"))),
        ["malformed config", "batch_size"])),
    "resume with an unknown model key": ("train", lambda c: (
        resume(copy_run(c.run, c.tmp, lambda k: k["model_args"].update(n_experts=8))), ["model_args", "n_experts"])),
    "resume with a malformed loader state": ("train", lambda c: (
        resume(copy_run(c.run, c.tmp, lambda k: k.update(loader={"epoch": "x"}))), ["ckpt.pt", "cannot restore"])),
    "resume with a malformed rng state": ("train", lambda c: (
        resume(copy_run(c.run, c.tmp, lambda k: k.update(rng={"torch": [torch.zeros(3)]}))), ["ckpt.pt", "cannot restore"])),
    "resume with optimizer state of the wrong shape": ("train", lambda c: (
        resume(copy_run(c.run, c.tmp, lambda k: k.update(optimizer={"state": 5}))), ["ckpt.pt", "cannot restore"])),
    "resume with a config that contradicts model_args": ("train", lambda c: (
        resume(copy_run(c.run, c.tmp, lambda k: k["config"].update(n_layer=3))), ["inconsistent", "n_layer"])),
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
    # reading: everything read is checked before anything is built (validate.py)
    "hf config.json with n_head 0": ("sample", lambda c: (
        [f"--out_dir={c.hf(config={'n_head': 0})}"], ["config.json", "n_head=0"])),
    "hf config.json with a number as a string": ("sample", lambda c: (
        [f"--out_dir={c.hf(config={'n_embd': '32'})}"], ["config.json", "n_embd='32'", "not an integer"])),
    "hf config.json with null": ("sample", lambda c: (
        [f"--out_dir={c.hf(config={'n_layer': None})}"], ["config.json", "n_layer=None"])),
    "hf config.json with a list": ("sample", lambda c: (
        [f"--out_dir={c.hf(config={'vocab_size': [66]})}"], ["config.json", "vocab_size=[66]"])),
    "hf config.json that is a list": ("sample", lambda c: (
        [f"--out_dir={c.hf(whole=[1, 2])}"], ["config.json", "not an object"])),
    "hf nanogpt.json with pad_vocab_to -5": ("sample", lambda c: (
        [f"--out_dir={c.hf(sidecar={'pad_vocab_to': -5})}"], ["nanogpt.json", "pad_vocab_to=-5"])),
    "hf nanogpt.json with a short char table": ("sample", lambda c: (
        [f"--out_dir={c.hf(sidecar=lambda m: m['tokenizer'].update(chars=m['tokenizer']['chars'][:10]))}"],
        ["nanogpt.json", "vocab_size"])),
    "fine-tune from an hf dir with n_head 0": ("train", lambda c: (
        [*train_args(c.data, c.tmp / "o"), f"--init_from={c.hf(config={'n_head': 0})}"], ["config.json", "n_head=0"])),
    "hf dir with NaN weights": ("sample", lambda c: ([f"--out_dir={c.hf(nan=True)}"], ["NaN or infinite"])),
    "checkpoint with NaN weights": ("sample", lambda c: (
        sample_ckpt(copy_run(c.run, c.tmp, weights(lambda w: w.index_fill(0, torch.tensor([1]), float("nan"))))),
        ["transformer.wte.weight", "NaN or infinite"])),
    "checkpoint with inf weights": ("eval", lambda c: (
        [f"--out_dir={copy_run(c.run, c.tmp, weights(lambda w: w * float('inf'))) / 'ckpt.pt'}"], ["NaN or infinite"])),
    "checkpoint with int64 weights": ("sample", lambda c: (
        sample_ckpt(copy_run(c.run, c.tmp, weights(lambda w: w.long()))), ["int64", "float32"])),
    "checkpoint with int8 weights": ("export", lambda c: (
        [f"--out_dir={copy_run(c.run, c.tmp, weights(lambda w: w.to(torch.int8))) / 'ckpt.pt'}",
         f"--hf_dir={c.tmp / 'hf'}"], ["int8"])),
    "checkpoint with complex weights": ("sample", lambda c: (
        sample_ckpt(copy_run(c.run, c.tmp, weights(lambda w: w.to(torch.complex64)))), ["complex64"])),
    "checkpoint with a tokenizer that is a string": ("sample", lambda c: (
        sample_ckpt(copy_run(c.run, c.tmp, lambda k: k.update(tokenizer="char"))), ["tokenizer", "not an object"])),
    "checkpoint whose char table is shorter than its vocabulary": ("sample", lambda c: (
        sample_ckpt(copy_run(c.run, c.tmp, lambda k: k["tokenizer"].update(chars=k["tokenizer"]["chars"][:10]))),
        ["tokenizer", "vocab_size", "char table of 10"])),
    "checkpoint with n_head 0 in model_args": ("sample", lambda c: (
        sample_ckpt(copy_run(c.run, c.tmp, lambda k: k["model_args"].update(n_head=0))), ["model_args", "n_head=0"])),
    "checkpoint with a string n_layer": ("train", lambda c: (
        resume(copy_run(c.run, c.tmp, lambda k: k["model_args"].update(n_layer="2"))), ["model_args", "n_layer='2'"])),
    "crafted checkpoint claiming 1.2B parameters": ("sample", lambda c: (
        [f"--out_dir={c.crafted()}"], ["claims", "crafted or damaged"])),
    "a million samples at once": ("sample", lambda c: (
        [f"--out_dir={c.run}", f"--num_samples={10**8}"], ["out of memory", "--num_samples"])),
    "eval batch too large": ("eval", lambda c: (
        [f"--out_dir={c.run}", f"--batch_size={10**7}"], ["out of memory", "--batch_size"])),
    "a few ids above the header's largest": ("train", lambda c: (
        train_args(c.data_with_a_bad_shard(run=3), c.tmp / "o"), ["train_000000.bin", "above the largest id"])),
    "eval on a shard with a few bad ids": ("eval", lambda c: (
        [f"--out_dir={c.run}", f"--data_root={c.data_with_a_bad_shard(run=3, split='val')}"],
        ["val_000000.bin", "above the largest id"])),
    "hellaswag endings that are numbers": ("eval", lambda c: (
        c.task({**HS_OK, "endings": [1, 2, 3, 4]}), ["hs.jsonl line 1", "endings"])),
    "hellaswag four empty endings": ("eval", lambda c: (
        c.task({**HS_OK, "endings": ["", " ", "", ""]}), ["hs.jsonl line 1", "endings", "non-empty"])),
    "hellaswag label 7": ("eval", lambda c: (c.task({**HS_OK, "label": 7}), ["hs.jsonl line 1", "label=7"])),
    "hellaswag label true": ("eval", lambda c: (c.task({**HS_OK, "label": True}), ["hs.jsonl line 1", "label=True"])),
    "hellaswag ctx that is a list": ("eval", lambda c: (c.task({**HS_OK, "ctx_a": ["A"]}), ["hs.jsonl line 1", "ctx_a"])),
    "hellaswag invalid UTF-8": ("eval", lambda c: (c.task(b'{"ctx_a": "caf\xe9"}'), ["hs.jsonl line 1", "not UTF-8"])),
    "hellaswag deep nesting": ("eval", lambda c: (c.task(b"[" * 100000 + b"]" * 100000), ["hs.jsonl line 1", "nested"])),
    "hellaswag bad line at train time": ("train", lambda c: (
        [*train_args(c.data, c.tmp / "o"), "--eval_tasks=hellaswag",
         f"--eval_tasks_file={c.task({**HS_OK, 'endings': [1, 2, 3, 4]})[-1].split('=', 1)[1]}"],
        ["hs.jsonl line 1", "endings"])),
    "config file that calls exit(0)": ("train", lambda c: (
        [config_file(c.tmp, "import sys\nsys.exit(0)\n"), *train_args(c.data, c.tmp / "o")], ["config.py", "exit(0)"])),
    "stop string of one backslash": ("sample", lambda c: ([f"--out_dir={c.run}", "--stop", "\\"], ["--stop"])),
    "temperature beyond float32": ("sample", lambda c: ([f"--out_dir={c.run}", "--temperature=1e300"], ["temperature="])),
    "stdout closed": ("sample", lambda c: (
        c.monkeypatch.setattr("sys.stdout", None) or [f"--out_dir={c.run}"], ["stdout is closed"])),
    # writing: one writer, never through a symlink, never over what is not ours
    "out_dir's lock is a symlink": ("train", lambda c: (
        c.symlink(c.tmp / "o" / "train.lock") and train_args(c.data, c.tmp / "o"), ["train.lock", "symbolic link"])),
    "export --overwrite over a folder that is not an export": ("export", lambda c: (
        [f"--out_dir={c.run}", f"--hf_dir={c.data}", "--overwrite"], ["not an export of this program"])),
    "export into the run folder": ("export", lambda c: (
        [f"--out_dir={c.run}", f"--hf_dir={c.run}", "--overwrite"], ["holds a training run"])),
    "export into a folder above the checkpoint": ("export", lambda c: (
        [f"--out_dir={c.run / 'ckpt.pt'}", f"--hf_dir={c.run.parent}", "--overwrite"], ["holds the checkpoint"])),
    "two exports into one folder": ("export", lambda c: (
        c.hold(c.export_lock(c.tmp / "hf")) and [f"--out_dir={c.run}", f"--hf_dir={c.tmp / 'hf'}"],
        ["another export.py", "process"])),
    "export onto a full disk (SafetensorError)": ("export", lambda c: (
        c.monkeypatch.setattr("safetensors.torch.save_file", c.safetensors_full) or
        [f"--out_dir={c.run}", f"--hf_dir={c.tmp / 'hf'}"], ["cannot write the export", "is as it was"])),
    "checkpoint write onto a full disk": ("train", lambda c: (
        c.full_disk("ckpt.pt.tmp") or train_args(c.data, c.tmp / "o"), ["cannot write checkpoint", "No space left"])),
    "bench prepare into an existing folder with a mistyped input": ("bench", lambda c: (
        ["prepare", f"--input={c.tmp / 'nope.txt'}", f"--work_dir={c.data}"], ["nope.txt", "not found"])),
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

    def data_with_a_bad_shard(self, run=2000, split="train"):
        """A copy of tiny_char whose train shard has a run of ids past its header's largest."""
        import numpy as np
        from shards import HEADER_BYTES
        root = self.tmp / "data"
        shutil.copytree(os.path.join(self.data, "tiny_char"), root / "tiny_char")
        path = root / "tiny_char" / f"{split}_000000.bin"
        tokens = np.memmap(path, dtype=np.uint16, mode="r+", offset=HEADER_BYTES)
        tokens[len(tokens) // 3 + 7:len(tokens) // 3 + 7 + run] = 60000
        tokens.flush()
        return root

    def hf(self, config=None, sidecar=None, whole=None, nan=False):
        """The tiny run exported to tmp/hf, then its config.json updated with `config` (or replaced by
        `whole`), its nanogpt.json with `sidecar` (a dict, or a function that edits it), or NaN weights."""
        import json
        d = self.tmp / "hfdir"
        export_script.export(export_script.ExportConfig(out_dir=str(self.run), hf_dir=str(d)), info=lambda m: None)
        if config is not None or whole is not None:
            c = json.loads((d / "config.json").read_text())
            (d / "config.json").write_text(json.dumps(whole if whole is not None else {**c, **config}))
        if sidecar is not None:
            m = json.loads((d / "nanogpt.json").read_text())
            m = sidecar(m) or m if callable(sidecar) else {**m, **sidecar}
            (d / "nanogpt.json").write_text(json.dumps(m))
        if nan:
            from safetensors.torch import load_file, save_file
            w = load_file(d / "model.safetensors")
            w["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")
            save_file(w, d / "model.safetensors")
        return d

    def crafted(self):
        """A best.pt of a few KB whose model_args claim GPT-2 XL's 1.5B parameters, with stride-0 tensors of
        exactly those shapes (a storage of one value each): nothing may be built from it."""
        from model import GPT, GPTConfig
        d = self.tmp / "crafted"
        d.mkdir()
        meta = checkpoint.load(str(self.run / "best.pt"))["tokenizer"]
        args = dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024, vocab_size=meta["vocab_size"], bias=True)
        with torch.device("meta"):
            shapes = GPT(GPTConfig(**args)).state_dict()
        state = {k: torch.zeros(1).expand(v.shape) for k, v in shapes.items()}
        torch.save({"model": state, "model_args": args, "tokenizer": meta, "iter_num": 1}, d / "best.pt")
        assert (d / "best.pt").stat().st_size < 200_000
        return d

    def task(self, doc):
        import json
        (self.tmp / "hs.jsonl").write_bytes(doc if isinstance(doc, bytes) else (json.dumps(doc) + "\n").encode())
        return [f"--out_dir={self.run}", "--task=hellaswag", f"--task_file={self.tmp / 'hs.jsonl'}"]

    def symlink(self, at):
        at.parent.mkdir(parents=True, exist_ok=True)
        victim = self.tmp / "victim.txt"
        victim.write_text("precious")
        at.symlink_to(victim)
        return True

    def export_lock(self, hf_dir):
        from shards import hold_lock
        return hold_lock(str(hf_dir.parent / f".{hf_dir.name}.export.lock"), lambda h: h)

    @staticmethod
    def safetensors_full(tensors, path, metadata=None):
        from safetensors import SafetensorError
        with open(path, "wb") as f:
            f.write(b"part")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    def full_disk(self, suffix):
        import safeio
        real = open

        self.monkeypatch.setattr(safeio, "open", lambda p, m="r", *a, **k: (
            FullDisk(real(p, m, *a, **k), 0) if str(p).endswith(suffix) else real(p, m, *a, **k)), raising=False)

    def sharded_run(self, fault):
        """The tiny run with its ckpt.pt sharded as FSDP writes it (written here on one process), then
        the shards folder given a fault: evil (a .metadata whose unpickling would run code), cut (a data
        file cut short), gone (the folder removed)."""
        import pickle
        import warnings

        import distributed
        from model import GPT, GPTConfig
        run = copy_run(self.run, self.tmp)
        ckpt = checkpoint.load(str(run / "ckpt.pt"))
        model = GPT(GPTConfig(**ckpt["model_args"]))
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
        distributed.load_model_state(model, ckpt.pop("model"))
        distributed.load_optimizer_state(model, optimizer, ckpt.pop("optimizer"))
        folder = run / "shards_0000004.0"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            distributed.save_sharded(model, optimizer, str(folder))
        checkpoint.save({**ckpt, "sharded": folder.name}, str(run / "ckpt.pt"))
        if fault == "evil":
            (folder / ".metadata").write_bytes(pickle.dumps(RunsCode(str(self.tmp / "pwned"))))
        elif fault == "cut":
            data = next(folder.glob("*.distcp"))
            data.write_bytes(data.read_bytes()[:100])
        elif fault == "gone":
            shutil.rmtree(folder)
        return run

    def pickled_run(self):
        d = self.tmp / "pickled"
        d.mkdir()
        torch.save({"model": {}, "evil": Context}, d / "ckpt.pt")
        return d


class RunsCode:
    """What a crafted pickle can do: call any function on load (here: create a file)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


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
    assert not (tmp_path / "pwned").exists(), "a crafted pickle ran code"


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 100


# ---------------------------------------------------------------------------------------------
# signals: every command, SIGTERM or SIGINT at work, once or twice: one line, exit 128 + signal, no partial work

def kill_self(signum, times=1):
    """A function that sends this process `signum` (times times), then does what `real` does."""
    def wrap(real):
        def fn(*a, **k):
            for _ in range(times):
                os.kill(os.getpid(), signum)
            return real(*a, **k)
        return fn
    return wrap


def signal_cases():
    import hf
    import plan as plan_script
    import prepare as prepare_script
    import shards
    return {
        "prepare": (prepare_script.main, lambda c: ["--input", str(c.tmp / "in.txt"), "--tokenizer", "char",
                                                     "--data_root", str(c.tmp / "data"), "--name", "x", "--num_proc", "1"],
                    lambda c, s: c.monkeypatch.setattr(shards.ShardWriter, "write", kill_self(s)(shards.ShardWriter.write))),
        "export": (export_script.main, lambda c: [f"--out_dir={c.run}", f"--hf_dir={c.tmp / 'hf'}"],
                   lambda c, s: c.monkeypatch.setattr(hf, "to_hf", kill_self(s)(hf.to_hf))),
        "eval": (eval_script.main, lambda c: [f"--out_dir={c.run}"],
                 lambda c, s: c.monkeypatch.setattr(eval_script, "score", kill_self(s)(eval_script.score))),
        "sample": (sample_script.main, lambda c: [f"--out_dir={c.run}", "--max_new_tokens=3"],
                   lambda c, s: c.monkeypatch.setattr(sample_script, "generate", kill_self(s)(sample_script.generate))),
        "plan": (plan_script.main, lambda c: ["--flops", "1e18"],
                 lambda c, s: c.monkeypatch.setattr(plan_script, "optimal_for_flops",
                                                    kill_self(s)(plan_script.optimal_for_flops))),
        "train, twice": (train_script.main, lambda c: train_args(c.data, c.tmp / "o"),
                         lambda c, s: (c.monkeypatch.setattr(train_script, "get_lr", kill_self(s)(train_script.get_lr)),
                                       c.monkeypatch.setattr(checkpoint, "save", kill_self(s)(checkpoint.save)))),
    }


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("name", ["prepare", "export", "eval", "sample", "plan", "train, twice"])
def test_signals(name, signame, data_root, run_dir, tmp_path, monkeypatch, capsys, shakespeare_text):
    import signal
    signum = getattr(signal, signame)
    cases = signal_cases()
    main, argv, patch = cases[name]
    (tmp_path / "in.txt").write_text(shakespeare_text[:5000])
    c = Context(data_root, run_dir, tmp_path, monkeypatch)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    before = snapshot(data_root, run_dir, tmp_path)
    try:
        patch(c, signum)
        code, out, err = run_main(main, argv(c), capsys)
    finally:
        monkeypatch.undo()
        for s, h in handlers.items():
            signal.signal(s, h)
    assert code == 128 + signum, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == ("interrupted" if signum == signal.SIGINT else f"stopped by {signame}"), err
    after = snapshot(data_root, run_dir, tmp_path)
    assert {p: after.get(p) for p in before} == before
    hidden = [p for p in after if any(part.endswith((".partial", ".old", ".tmp")) for part in p.split(os.sep))]
    assert not hidden, hidden  # partial work removed
    assert not os.path.exists(tmp_path / "hf") and not os.path.exists(tmp_path / "data" / "x")


def test_a_tiny_top_p_with_a_huge_temperature_samples(run_dir, capsys):
    """top_p rounds to 0 in float32 and the temperature flattens the logits to one value: the most likely
    token still stays, so sampling works instead of drawing from no token at all."""
    code, out, err = run_main(sample_script.main, [f"--out_dir={run_dir}", "--top_p=1e-300", "--temperature=1e6",
                                                   "--num_samples=2", "--max_new_tokens=5"], capsys)
    assert code == 0, err


def test_a_nan_that_shows_first_in_the_eval_sample_rolls_back_then_stops(data_root, tmp_path, monkeypatch, capsys):
    """The weights turn NaN while the val loss still looks fine: the eval sample is where it shows, and it
    takes the same path as a bad eval (roll back with half the learning rate; after the fifth, one line)."""
    real, calls = train_script.evaluate, [0]

    def evaluate(model, *a, **k):
        out = real(model, *a, **k)
        calls[0] += 1
        if calls[0] > 1:  # after the step-0 eval (whose checkpoint is the rollback target)
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return out
    monkeypatch.setattr(train_script, "evaluate", evaluate)
    code, out, err = run_main(train_script.main, train_args(data_root, tmp_path / "o", sample_tokens=4,
                                                            max_iters=4, eval_interval=2), capsys)
    assert_one_line_error(code, err, "training keeps failing", "not finite", "ckpt.pt is the last good checkpoint")
    assert out.count("rolled back to step 0") == 5


def test_the_first_eval_failing_stops_in_one_line(data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_script, "evaluate", lambda *a, **k: {"train": float("nan"), "val": float("nan")})
    code, out, err = run_main(train_script.main, train_args(data_root, tmp_path / "o"), capsys)
    assert_one_line_error(code, err, "before its first checkpoint")


def test_bench_prepare_in_an_existing_folder_leaves_it_as_it_was(tmp_path, capsys):
    """--work_dir names a folder of the user's: bench.py works in a scratch folder it makes inside, and
    removes only that."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    before = snapshot(str(mine))
    code, out, err = run_main(bench_script.main, ["prepare", f"--work_dir={mine}", "--megabytes=0.02", "--workers=[1]",
                                                  "--repeats=1", "--baseline=False", "--memory=False"], capsys)
    assert code == 0, err
    assert snapshot(str(mine)) == before and os.listdir(mine) == ["notes.txt"]

"""Shared fixtures. Tests run on CPU, offline: the text and the GPT-2 ranks come from assets/."""

import errno
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(ROOT, "assets", "tinyshakespeare.txt")
SHARED = os.path.join(os.path.dirname(ROOT), "shared")  # beside the project in CI: tiktoken's own copy of the ranks

sys.path.insert(0, ROOT)

os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def shakespeare_text():
    with open(SHAKESPEARE, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, shakespeare_text):
    """A data folder with two small prepared datasets: tiny_char and tiny_gpt2 (the first 60,000
    characters of tiny Shakespeare)."""
    from prepare import PrepareConfig, prepare
    from sources import SourceConfig
    root = tmp_path_factory.mktemp("data")
    corpus = root / "tiny.txt"
    corpus.write_text(shakespeare_text[:60000], encoding="utf-8")
    for tokenizer in ("char", "gpt2"):
        prepare(PrepareConfig(tokenizer=tokenizer, name=f"tiny_{tokenizer}", data_root=str(root), num_proc=1),
                [SourceConfig(input=[str(corpus)])])
    return str(root)


def tiny_train_config(data_root, out_dir, **overrides):
    """A TrainConfig for a model small enough to train in a second on a CPU."""
    from train import TrainConfig
    kw = dict(dataset="tiny_char", data_root=data_root, out_dir=str(out_dir), n_layer=2, n_head=2, n_embd=32,
              block_size=32, batch_size=4, gradient_accumulation_steps=1, max_iters=10, lr_decay_iters=10,
              warmup_iters=2, learning_rate=3e-3, min_lr=3e-4, eval_interval=5, eval_iters=2, log_interval=1,
              device="cpu", compile=False, dropout=0.0, sample_tokens=0, plot=False)
    kw.update(overrides)
    return TrainConfig(**kw)


def read_metrics(out_dir):
    import json
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_main(main, argv, capsys):
    """Run a script's main(argv) in-process exactly as its command line does (configurator.run):
    returns (exit code, stdout, stderr). An exception that run() does not turn into a one-line
    error escapes, as it would print a traceback."""
    from configurator import run
    code = 0
    try:
        run(lambda: main(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(*dirs):
    """{path: bytes} of every file under dirs: what a failed command must leave unchanged."""
    files = {}
    for d in dirs:
        for root, _, names in os.walk(d):
            for name in names:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    files[path] = f.read()
    return files


def assert_one_line_error(code, err, *fragments):
    """A user mistake: non-zero exit, one 'error:' line naming what was wrong, no traceback."""
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


class FullDisk:
    """A file whose writes fail once `room` bytes are in, as on a full disk."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

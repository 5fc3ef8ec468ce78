"""The README's commands through the real command lines, and the errors users see."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SHAKESPEARE


def cli(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, args[0]), *args[1:]], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_clean_error(r, *fragments):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shakespeare_text):
    d = tmp_path_factory.mktemp("cli")
    (d / "corpus.txt").write_text(shakespeare_text[:100000], encoding="utf-8")
    return d


TRAIN = ["--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32",
         "--batch_size=8", "--gradient_accumulation_steps=1", "--max_iters=40", "--lr_decay_iters=40",
         "--warmup_iters=5", "--learning_rate=3e-3", "--eval_interval=20", "--eval_iters=4", "--log_interval=10"]


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_readme_chain_prepare_train_sample(workdir, tokenizer):
    r = cli("prepare.py", "--input", "corpus.txt", "--tokenizer", tokenizer, "--name", f"c_{tokenizer}", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert f"wrote data/c_{tokenizer}" in r.stdout
    observe = [] if tokenizer == "char" else ["--plot=False", "--sample_tokens=0"]  # the defaults, once
    r = cli("train.py", "--dataset", f"c_{tokenizer}", "--out_dir", f"out/{tokenizer}", *TRAIN, *observe, cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "step 40: train loss" in r.stdout and "iter 40/40" in r.stdout
    if tokenizer == "char":
        assert r.stdout.count("sample: ") == 3 and (workdir / "out" / "char" / "loss.png").exists()
    r = cli("sample.py", "--start", "ROMEO:", "--max_new_tokens", "30", "--num_samples", "2", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ROMEO:") == 2 and f"out/{tokenizer}/best.pt" in r.stderr
    r = cli("eval.py", "--out_dir", f"out/{tokenizer}", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bits_per_byte"] > 0 and "bits per byte" in r.stderr
    r = cli("export.py", "--out_dir", f"out/{tokenizer}", "--hf_dir", f"hf/{tokenizer}", cwd=workdir)
    assert r.returncode == 0, r.stderr
    r = cli("sample.py", "--out_dir", f"hf/{tokenizer}", "--start", "ROMEO:", "--max_new_tokens", "5",
            "--num_samples", "1", "--stop", "\\n", cwd=workdir)
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:") and r.stdout.count("\n") == 1, r.stderr


def test_shakespeare_config_file_with_overrides(workdir):
    r = cli("prepare.py", "--input", SHAKESPEARE, "--tokenizer=char", "--name=shakespeare_char", cwd=workdir)
    assert r.returncode == 0, r.stderr
    r = cli("train.py", os.path.join(ROOT, "config", "shakespeare_char.py"), *TRAIN, "--max_iters=2",
            "--eval_interval=2", "--out_dir=out/cfg", "--plot=False", "--sample_tokens=0", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "context 32" in r.stdout and "8 x 32" in r.stdout  # the command line won over the file
    r = cli("train.py", "--init_from=resume", "--out_dir=out/cfg", "--max_iters=4", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "resuming at step 2 of 4" in r.stdout and "iter 4/4" in r.stdout


def test_help_lists_keys(workdir):
    r = cli("train.py", "--help", cwd=workdir)
    assert r.returncode == 0 and "--batch_size=12" in r.stdout and "--gradient_accumulation_steps" in r.stdout


def test_user_mistakes_are_one_line_errors(workdir):
    assert_clean_error(cli("train.py", "--batch_sise=3", cwd=workdir), "batch_sise", "batch_size")
    assert_clean_error(cli("train.py", "--batch_size=big", cwd=workdir), "batch_size", "integer")
    assert_clean_error(cli("train.py", "--dataset=missing", "--device=cpu", cwd=workdir), "prepare.py")
    (workdir / "empty.txt").write_text("")
    assert_clean_error(cli("prepare.py", "--input", "empty.txt", cwd=workdir), "no text")
    os.makedirs(workdir / "nothing", exist_ok=True)
    assert_clean_error(cli("sample.py", "--out_dir", "nothing", cwd=workdir), "no checkpoint")
    assert_clean_error(cli("train.py", "--init_from=resume", "--out_dir=nothing", "--device=cpu", cwd=workdir),
                       "no ckpt.pt")
    assert_clean_error(cli("export.py", "--out_dir", "nothing", cwd=workdir), "no checkpoint")
    assert_clean_error(cli("eval.py", "--out_dir", "nothing", cwd=workdir), "no checkpoint")


# Ctrl-C exactly while the heavy imports load: the first `import torch` (or numpy) sends SIGINT to the process
CTRL_C_DURING_IMPORTS = """
import builtins, os, runpy, signal, sys
real = builtins.__import__
def hooked(name, *a, **k):
    if name in ("torch", "numpy") and name not in sys.modules:
        os.kill(os.getpid(), signal.SIGINT)
    return real(name, *a, **k)
builtins.__import__ = hooked
sys.argv = [sys.argv[1], "--help"]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("script", ["train.py", "sample.py", "eval.py", "export.py", "prepare.py", "bench.py"])
def test_ctrl_c_while_torch_loads_exits_quietly(script, tmp_path):
    r = subprocess.run([sys.executable, "-c", CTRL_C_DURING_IMPORTS, os.path.join(ROOT, script)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and "Traceback" not in r.stderr and "usage" not in r.stdout, r.stderr

"""A reference loss curve: the first 20 step losses of the tiny test config, committed.

Every equivalence test compares this code with itself (accumulation against one big batch, resume
against uninterrupted, 2 processes against 1), so a change that moves every path the same way (the
init order, the schedule, the optimizer's groups, the data order) passes them all; it moves this curve.

The tolerance, relative 1e-5 on each step's loss: on the machine that recorded the file, the curve is
bit-identical with 1 and 2 threads and moves by 1.2e-7 between PyTorch's AVX512, AVX2 and plain CPU
kernels (ATEN_CPU_CAPABILITY), which is float32 rounding; 1e-5 is about 100 times that. Changes a
user would call different move it by far more: warmup_iters 2 -> 3 by 1e-2, weight_decay 0.1 -> 0.11
by 2e-5. Not by everything: swapping the exact GELU for its tanh approximation moves it by only 1.3e-7
here (a tiny model's activations sit where the two agree); test_export.py's float64 comparison with
transformers' "gelu" guards that one.

A change meant to move the curve regenerates the file, and says so in its commit:
    REGENERATE_REFERENCE_LOSSES=1 python -m pytest -q tests/test_reference_losses.py
The file holds the PyTorch version it was made with (CI's, requirements-ci.txt); under another minor
version kernels may round differently, and the test skips, saying so."""

import json
import os
import platform

import pytest
import torch

from conftest import read_metrics, tiny_train_config

PATH = os.path.join(os.path.dirname(__file__), "data", "reference_losses.json")
OVERRIDES = dict(max_iters=20, lr_decay_iters=20, eval_interval=20)
RTOL = 1e-5


def minor(version):
    return ".".join(version.split("+")[0].split(".")[:2])


def test_the_tiny_config_trains_along_the_reference_curve(data_root, tmp_path):
    from train import train
    train(tiny_train_config(data_root, tmp_path / "run", **OVERRIDES))
    losses = [e["loss"] for e in read_metrics(tmp_path / "run") if "loss" in e]
    assert len(losses) == 20
    if os.environ.get("REGENERATE_REFERENCE_LOSSES") == "1":
        with open(PATH, "w") as f:
            json.dump({"torch": torch.__version__.split("+")[0], "machine": platform.machine(),
                       "config": "tests/conftest.py tiny_train_config with " + json.dumps(OVERRIDES),
                       "losses": losses}, f, indent=1)
            f.write("\n")
    with open(PATH) as f:
        reference = json.load(f)
    if minor(reference["torch"]) != minor(torch.__version__):
        pytest.skip(f"the reference losses were recorded with torch {reference['torch']}, this is {torch.__version__}")
    assert losses == pytest.approx(reference["losses"], rel=RTOL), (
        "the tiny config's loss curve moved: if the change means to move it, regenerate "
        "tests/data/reference_losses.json with REGENERATE_REFERENCE_LOSSES=1 (see this test's docstring)")

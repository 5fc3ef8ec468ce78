import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import checkpoint
from configurator import UserError
from conftest import ROOT
from eval import EvalConfig, evaluate, windows
from model import GPT, GPTConfig
from shards import open_shard, read_meta, shard_paths
from tokenizer import from_meta


def make_checkpoint(path, data_root, dataset, block_size=32):
    """A checkpoint of a small random model for `dataset`, as train.py would save it."""
    meta = read_meta(os.path.join(data_root, dataset))["tokenizer"]
    torch.manual_seed(0)
    args = dict(n_layer=1, n_head=2, n_embd=16, block_size=block_size, vocab_size=meta["vocab_size"], bias=False)
    checkpoint.save({"model": GPT(GPTConfig(**args)).state_dict(), "model_args": args, "tokenizer": meta,
                     "config": {"dataset": dataset, "data_root": data_root}, "iter_num": 0,
                     "best_val_loss": float("inf")}, str(path))
    return str(path)


def run_eval(**kw):
    return evaluate(EvalConfig(device="cpu", **kw), info=lambda m: None)


@pytest.mark.parametrize("n, block_size, stride", [(2, 4, 4), (10, 4, 4), (11, 4, 4), (12, 4, 4), (50, 8, 3),
                                                   (7, 16, 5), (33, 8, 1)])
def test_windows_score_every_target_once_with_context(n, block_size, stride):
    scored = []
    for start, length, skip in windows(n, block_size, stride):
        assert 1 <= length <= block_size and 0 <= skip < length
        targets = range(start + 1, start + length + 1)
        scored += targets[skip:]
        if start > 0:  # every window after the first has at least block_size - stride tokens of context
            assert skip >= block_size - stride
    assert scored == list(range(1, n))


def test_whole_split_loss_bytes_and_bits_per_byte(data_root, tmp_path):
    path = make_checkpoint(tmp_path / "best.pt", data_root, "tiny_char")
    result = run_eval(out_dir=path)
    # the reference: non-overlapping windows of block_size over each shard, every target scored once
    model = GPT(GPTConfig(**checkpoint.load(path)["model_args"])).eval()
    model.load_state_dict(checkpoint.load(path)["model"])
    tokenizer = from_meta(read_meta(os.path.join(data_root, "tiny_char"))["tokenizer"])
    nats, count, text = 0.0, 0, ""
    for shard in shard_paths(os.path.join(data_root, "tiny_char"), "val"):
        t = torch.from_numpy(open_shard(shard).astype("int64"))
        for s in range(0, len(t) - 1, 32):
            x, y = t[s:s + 32], t[s + 1:s + 33]
            x = x[:len(y)]
            with torch.no_grad():
                nats += F.cross_entropy(model(x[None], y[None])[0][0], y, reduction="sum").item()
            count += len(y)
        text += tokenizer.decode([i for i in t[1:].tolist() if i != tokenizer.eot_id])
    assert result["tokens"] == count and result["bytes"] == len(text.encode("utf-8"))
    assert result["loss"] == pytest.approx(nats / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nats / count), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / result["bytes"], rel=1e-5)
    sliding = run_eval(out_dir=path, stride=8)
    assert sliding["tokens"] == count and sliding["stride"] == 8 and sliding["loss"] != result["loss"]


def test_evals_ask_the_model_for_the_loss_only(data_root, tmp_path, monkeypatch):
    """eval.py and train.py's evals use only the loss: a forward with targets that returned its logits
    would build a (B, T, vocab) tensor per batch (about 1.2 GB for GPT-2 at batch 16 in bf16)."""
    from conftest import tiny_train_config
    from train import train
    calls, forward = [], GPT.forward

    def recorded(self, idx, targets=None, cache=None, return_logits=True):
        if targets is not None and not self.training:
            calls.append(return_logits)
        return forward(self, idx, targets, cache, return_logits)
    monkeypatch.setattr(GPT, "forward", recorded)
    run_eval(out_dir=make_checkpoint(tmp_path / "best.pt", data_root, "tiny_char"))
    assert calls and not any(calls)
    calls.clear()
    train(tiny_train_config(data_root, tmp_path / "run", max_iters=5))
    assert calls and not any(calls)


def test_progress_off_a_terminal_is_a_plain_line_at_most_every_interval(monkeypatch):
    import io
    import metrics
    clock = iter([0.0, 10.0, 31.0, 45.0, 62.0])  # __init__, then one reading per update
    monkeypatch.setattr(metrics.time, "monotonic", lambda: next(clock))
    log = io.StringIO()  # not a terminal
    with metrics.Progress(4, "scoring val", "batches", file=log) as p:
        for _ in range(4):
            p.update()
    lines = log.getvalue().splitlines()  # nothing at 10 s; at 31; 45 is too soon after it; at 62
    assert lines == ["scoring val: 2 of 4 batches (50%), 31 s", "scoring val: 4 of 4 batches (100%), 62 s"]
    assert "\r" not in log.getvalue()


def test_evals_print_progress_lines_in_a_log(data_root, tmp_path, monkeypatch, capsys):
    """eval.py, train.py's evals and HellaSwag, with stderr not a terminal (capsys): plain lines, no bar."""
    import metrics
    from conftest import tiny_train_config
    from train import train
    monkeypatch.setattr(metrics.Progress, "INTERVAL", 0.0)  # a line at every update
    run_eval(out_dir=make_checkpoint(tmp_path / "best.pt", data_root, "tiny_char"))
    err = capsys.readouterr().err
    assert "scoring val: " in err and " tokens (" in err and "\r" not in err
    train(tiny_train_config(data_root, tmp_path / "run", max_iters=2, eval_interval=2))
    err = capsys.readouterr().err
    assert "eval val: 2 of 2 batches (100%)" in err and "\r" not in err


def test_bytes_of_gpt2_tokens(data_root, tmp_path):
    path = make_checkpoint(tmp_path / "best.pt", data_root, "tiny_gpt2")
    result = run_eval(out_dir=path, batch_size=3)
    tokenizer = from_meta(read_meta(os.path.join(data_root, "tiny_gpt2"))["tokenizer"])
    shards = [open_shard(p) for p in shard_paths(os.path.join(data_root, "tiny_gpt2"), "val")]
    text = "".join(tokenizer.decode([i for i in s[1:].tolist() if i != tokenizer.eot_id]) for s in shards)
    assert result["tokens"] == sum(len(s) - 1 for s in shards) and result["bytes"] == len(text.encode("utf-8"))
    assert result["tokens"] < result["bytes"] / 3  # BPE: several bytes per token, unlike characters


def test_mistakes_are_clear_errors(data_root, tmp_path):
    path = make_checkpoint(tmp_path / "best.pt", data_root, "tiny_char")
    with pytest.raises(UserError, match="uses tokenizer gpt2 .* but the model uses char"):
        run_eval(out_dir=path, dataset="tiny_gpt2")
    with pytest.raises(UserError, match="no test shards"):
        run_eval(out_dir=path, split="test")
    with pytest.raises(UserError, match="dataset folder .*nope not found"):
        run_eval(out_dir=path, dataset="nope")
    ckpt = checkpoint.load(path)
    for config in ({"dataset": {"tiny_char": 0.5, "other": 0.5}}, None):  # a mix of datasets; none saved
        ckpt["config"] = config
        checkpoint.save(ckpt, path)
        with pytest.raises(UserError, match="does not name the one dataset .* pass --dataset"):
            run_eval(out_dir=path)
    assert run_eval(out_dir=path, dataset="tiny_char", data_root=data_root)["tokens"] > 0


def test_command_line_prints_one_json_line(data_root, tmp_path):
    make_checkpoint(tmp_path / "best.pt", data_root, "tiny_char")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--out_dir", str(tmp_path), "--device=cpu"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)  # stdout is the JSON line alone
    assert result["split"] == "val" and "bits per byte" in r.stderr and "perplexity" in r.stderr

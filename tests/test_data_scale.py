"""Data at scale: several sources and weights, Hub options, streaming, trained BPE, kill -9, mixtures."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import prepare as prep
import sources
import tokenizer as tok
from configurator import UserError
from conftest import ROOT, read_metrics, tiny_train_config
from prepare import PrepareConfig, parse_command_line, prepare
from shards import open_shard, read_meta, shard_paths
from sources import SourceConfig


def tokens_of(d, split):
    return np.concatenate([np.asarray(open_shard(p)) for p in shard_paths(str(d), split)])


def jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def test_command_line_groups_options_by_source():
    cfg, specs = parse_command_line(["--name", "mix", "--dataset", "wikimedia/wikipedia", "--config", "20231101.en",
                                     "--split", "train[:10000]", "--weight", "0.3", "--tokenizer=char",
                                     "--input", "a.txt", "b/", "--text_column", "content", "--weight=0.7"])
    assert (cfg.name, cfg.tokenizer) == ("mix", "char")
    assert specs == [SourceConfig(dataset="wikimedia/wikipedia", config="20231101.en", split="train[:10000]", weight=0.3),
                     SourceConfig(input=["a.txt", "b/"], text_column="content", weight=0.7)]
    assert parse_command_line([])[1] == [SourceConfig(dataset="roneneldan/TinyStories")]
    assert parse_command_line(["--text_column", "story"])[1] == [SourceConfig(dataset="roneneldan/TinyStories",
                                                                              text_column="story")]
    with pytest.raises(UserError, match="unknown config key 'wieght'.*'weight'"):
        parse_command_line(["--input", "a.txt", "--wieght=1"])


def test_weighted_mix_takes_token_shares_and_shuffles_documents(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", [f"alpha {i} " * 20 for i in range(300)])
    b = jsonl(tmp_path / "b.jsonl", [f"beta {i} " * 20 for i in range(300)])
    cfg = PrepareConfig(data_root=str(tmp_path), name="mix", tokenizer="char", num_proc=1, val_fraction=0.0)
    meta = prepare(cfg, [SourceConfig(input=[a], weight=3), SourceConfig(input=[b], weight=1)])
    assert meta["mix"] == {"weights": [0.75, 0.25], "seed": 1337}
    t = tok.from_meta(meta["tokenizer"])
    docs = t.decode(tokens_of(tmp_path / "mix", "train").tolist()).split("<|endoftext|>")[:-1]
    share = sum(len(d) + 1 for d in docs if d.startswith("alpha")) / sum(len(d) + 1 for d in docs)
    assert share == pytest.approx(0.75, abs=0.01)
    first = [d.split()[0] for d in docs[:20]]
    assert "alpha" in first and "beta" in first  # shuffled at the document level, not one source then the other
    prepare(PrepareConfig(**{**vars(cfg), "name": "mix2"}), [SourceConfig(input=[a], weight=3),
                                                                     SourceConfig(input=[b], weight=1)])
    assert np.array_equal(tokens_of(tmp_path / "mix", "train"), tokens_of(tmp_path / "mix2", "train"))
    prepare(PrepareConfig(**{**vars(cfg), "name": "mix3", "seed": 1}), [SourceConfig(input=[a], weight=3),
                                                                       SourceConfig(input=[b], weight=1)])
    assert not np.array_equal(tokens_of(tmp_path / "mix", "train"), tokens_of(tmp_path / "mix3", "train"))
    with pytest.raises(UserError, match="give a --weight to every source or to none"):
        prepare(cfg, [SourceConfig(input=[a], weight=3), SourceConfig(input=[b])])


def fake_hub(monkeypatch, splits, calls=None):
    datasets = pytest.importorskip("datasets")

    def load_dataset(*args, split=None, streaming=False):
        if calls is not None:
            calls.append((args, split, streaming))
        if streaming:
            parts = {k: datasets.IterableDataset.from_generator(lambda v=v: ({"content": t} for t in v))
                     for k, v in splits.items()}
        else:
            parts = {k: datasets.Dataset.from_dict({"content": v}) for k, v in splits.items()}
        return parts[split.split("[")[0]] if split else datasets.DatasetDict(parts) if not streaming else parts
    monkeypatch.setattr(sources, "check_hub_reachable", lambda name: None)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


def test_hub_dataset_config_split_and_column(tmp_path, monkeypatch):
    calls = []
    fake_hub(monkeypatch, {"train": [f"story {i}." for i in range(100)]}, calls)
    cfg = PrepareConfig(data_root=str(tmp_path), name="w", num_proc=1)
    meta = prepare(cfg, [SourceConfig(dataset="wikimedia/wikipedia", config="20231101.en", split="train[:50]",
                                      text_column="content")])
    assert calls == [(("wikimedia/wikipedia", "20231101.en"), "train[:50]", False)]
    assert meta["sources"][0]["val"] == "text tail" and meta["counts"]["val"]["tokens"] > 0
    with pytest.raises(UserError, match=r"has no column 'text' \(columns: \['content'\]\)"):
        prepare(PrepareConfig(data_root=str(tmp_path), name="x", num_proc=1), [SourceConfig(dataset="wikimedia/wikipedia")])


def test_streaming_caps_tokens_and_holds_out_every_kth_document(tmp_path, monkeypatch):
    stories = [f"Once upon a time, story number {i} happened." for i in range(2000)]
    calls = []
    fake_hub(monkeypatch, {"train": stories}, calls)
    cfg = PrepareConfig(data_root=str(tmp_path), name="s", num_proc=1, streaming=True, max_tokens=3000)
    meta = prepare(cfg, [SourceConfig(dataset="big/corpus", text_column="content")])
    assert calls[0][2] is True  # streamed
    assert 3000 <= meta["counts"]["train"]["tokens"] < 3000 + 13 * 1024  # stops within a batch of the cap
    assert meta["sources"][0]["val"] == "every k-th document"
    t = tok.GPT2Tokenizer()
    val_docs = t.decode(tokens_of(tmp_path / "s", "val").tolist()).split("<|endoftext|>")[:-1]
    assert val_docs[:3] == [stories[9], stories[19], stories[29]]  # every 10th: val_fraction 0.1


def test_a_split_that_selects_nothing_is_a_clear_error(tmp_path, monkeypatch):
    fake_hub(monkeypatch, {"train": ["", "  "]})
    with pytest.raises(UserError, match="no text to tokenize in empty/set"):
        prepare(PrepareConfig(data_root=str(tmp_path), name="e", num_proc=1),
                [SourceConfig(dataset="empty/set", text_column="content")])
    assert not (tmp_path / "e").exists() and not (tmp_path / ".e.partial").exists()


def test_trained_bpe_round_trips_and_travels_to_training_and_sampling(tmp_path, shakespeare_text):
    from sample import SampleConfig, sample
    from train import train
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_text[:200000])
    meta = prepare(PrepareConfig(data_root=str(tmp_path / "data"), name="b", tokenizer="bpe", vocab_size=512,
                                 num_proc=2), [SourceConfig(input=[str(corpus)])])
    d = tmp_path / "data" / "b"
    assert meta["tokenizer"]["kind"] == "bpe" and meta["tokenizer"]["vocab_size"] == 512
    assert (d / "tokenizer.json").read_text() == meta["tokenizer"]["json"]
    t = tok.from_meta(read_meta(str(d))["tokenizer"])
    text = t.decode(np.concatenate([tokens_of(d, "train"), tokens_of(d, "val")]).tolist())
    assert text == shakespeare_text[:200000] + "<|endoftext|>"  # exact, through the shards
    assert len(t.encode(shakespeare_text[:200000])) < 0.6 * 200000  # merges learned: bytes alone would be 1 per character
    train(tiny_train_config(str(tmp_path / "data"), tmp_path / "out", dataset="b", max_iters=4))
    import io
    out = io.StringIO()
    texts = sample(SampleConfig(out_dir=str(tmp_path / "out"), start="ROMEO:", num_samples=1, max_new_tokens=10,
                                device="cpu"), out=out, info=lambda m: None)
    assert texts[0].startswith("ROMEO:")


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import prepare
real, calls = prepare.encode_batch, [0]
def encode_batch(batch):
    calls[0] += 1
    if calls[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(batch)
prepare.encode_batch = encode_batch
prepare.main(sys.argv[1:])
"""


def test_kill_9_during_prepare_then_rerun_equals_an_uninterrupted_run(tmp_path, shakespeare_text):
    # 5,000 documents: several batches of work, so the kill lands in the middle
    f = jsonl(tmp_path / "in.jsonl", [shakespeare_text[i:i + 80] for i in range(0, 400000, 80)])
    args = ["--input", f, "--data_root", str(tmp_path / "data"), "--num_proc", "1", "--shard_tokens", "20000"]
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER.format(root=ROOT))
    r = subprocess.run([sys.executable, str(killer), *args, "--name", "k"], capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL
    assert not (tmp_path / "data" / "k" / "meta.json").exists()  # nothing looks complete
    assert (tmp_path / "data" / ".k.partial").exists()
    prep.main([*args, "--name", "k"])
    prep.main([*args, "--name", "ref"])
    a, b = tmp_path / "data" / "k", tmp_path / "data" / "ref"
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for name in os.listdir(b):
        if name.endswith(".bin"):
            assert (a / name).read_bytes() == (b / name).read_bytes()
    strip = lambda m: {k: v for k, v in m.items() if k not in ("seconds", "name")}
    assert strip(read_meta(str(a))) == strip(read_meta(str(b)))
    assert not os.path.exists(tmp_path / "data" / ".k.partial")


@pytest.fixture(scope="module")
def mix_root(tmp_path_factory, shakespeare_text):
    """Two GPT-2 datasets (the head and the tail of tiny Shakespeare) and a char one."""
    root = tmp_path_factory.mktemp("mixdata")
    for name, text, kind in (("head", shakespeare_text[:60000], "gpt2"), ("tail", shakespeare_text[-60000:], "gpt2"),
                             ("chars", shakespeare_text[:60000], "char")):
        f = root / f"{name}.txt"
        f.write_text(text)
        prepare(PrepareConfig(data_root=str(root), name=name, tokenizer=kind, num_proc=1), [SourceConfig(input=[str(f)])])
    return str(root)


def test_training_on_a_mix_of_prepared_datasets(mix_root, tmp_path):
    from train import train
    train(tiny_train_config(mix_root, tmp_path / "run", dataset={"head": 0.9, "tail": 0.1}, max_iters=6,
                            eval_interval=3))
    e = [e for e in read_metrics(tmp_path / "run") if "val_loss" in e][-1]
    assert e["val_loss"] == pytest.approx(0.9 * e["val_loss/head"] + 0.1 * e["val_loss/tail"])
    with pytest.raises(UserError, match="must share a tokenizer: .*head uses gpt2.*chars uses char"):
        train(tiny_train_config(mix_root, tmp_path / "run2", dataset={"head": 0.5, "chars": 0.5}))
    with pytest.raises(UserError, match="positive weights"):
        train(tiny_train_config(mix_root, tmp_path / "run3", dataset={"head": 0.5, "tail": -1}))


def test_mixture_loader_keeps_the_weights_and_resumes(mix_root):
    import torch
    from dataloader import DataLoader
    dirs = [os.path.join(mix_root, "head"), os.path.join(mix_root, "tail")]
    a = DataLoader(dirs, "train", 10, 16, seed=0, weights=[0.8, 0.2])
    stream = [a.next_batch()[0] for _ in range(20)]
    assert a.counts == [160, 40]
    b = DataLoader(dirs, "train", 10, 16, seed=0, weights=[0.8, 0.2])
    for _ in range(7):
        b.next_batch()
    c = DataLoader(dirs, "train", 10, 16, seed=0, weights=[0.8, 0.2])
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(c.next_batch()[0], s) for s in stream[7:])

"""The default source (TinyStories from the Hub) through the real `datasets` library, offline.

load_dataset reads a local folder laid out as a Hub dataset repository with the same builder, split
detection and streaming as a download, so a folder laid out as roneneldan/TinyStories is (data/
train-*.parquet and data/validation-*.parquet, a `text` column) runs the code users run first:
prepare.py's command line, datasets' parquet builder, its splits, and --streaming. (test_prepare.py's
stand-in for load_dataset tests the rest of the path without the library.)"""

import os

import pytest

import prepare
import tokenizer as tok
from conftest import run_main
from shards import read_meta

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

STORIES = [f"Once upon a time there was a little {animal} called {name}. It liked to play."
           for animal in ("cat", "dog", "bird", "fox") for name in ("Tom", "Lily", "Max", "Sue", "Ben")]
TRAIN, VAL = STORIES[:16], STORIES[16:]


@pytest.fixture
def tinystories(tmp_path, monkeypatch):
    """A folder laid out as the TinyStories repository, and datasets' cache in tmp_path."""
    repo = tmp_path / "roneneldan" / "TinyStories"
    (repo / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": TRAIN}), repo / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": VAL}), repo / "data" / "validation-00000-of-00001.parquet")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    return str(repo)


def tokens(root, name, split):
    from shards import open_shard, shard_paths
    return [int(t) for p in shard_paths(os.path.join(root, name), split) for t in open_shard(p)]


def test_a_tinystories_folder_prepares_the_same_tokens_downloaded_or_streamed(tinystories, tmp_path, capsys):
    root = str(tmp_path / "out")
    for name, streaming in (("plain", []), ("streamed", ["--streaming"])):
        code, out, err = run_main(prepare.main, streaming + ["--data_root", root, "--name", name, "--num_proc", "1",
                                                             "--dataset", tinystories], capsys)
        assert code == 0, err
        source = read_meta(os.path.join(root, name))["sources"][0]
        assert source["dataset"] == tinystories and source["val"] == "own split"
        assert source["streaming"] == bool(streaming)
    for split, stories in (("train", TRAIN), ("val", VAL)):
        assert tokens(root, "plain", split) == tokens(root, "streamed", split)
        text = tok.GPT2Tokenizer().decode(tokens(root, "plain", split))
        assert text == "".join(s + "<|endoftext|>" for s in stories)  # every story once, in order, each ended


def test_the_default_source_is_tinystories_through_datasets(tinystories, tmp_path, monkeypatch, capsys):
    """`python prepare.py` with no source: the default dataset (here the local folder) and its name."""
    monkeypatch.setattr(prepare, "DEFAULT_DATASET", tinystories)
    root = str(tmp_path / "out")
    code, out, err = run_main(prepare.main, ["--data_root", root, "--num_proc", "1"], capsys)
    assert code == 0, err
    assert tok.GPT2Tokenizer().decode(tokens(root, "tinystories", "val")) == "".join(s + "<|endoftext|>" for s in VAL)
    assert read_meta(os.path.join(root, "tinystories"))["documents"] == len(STORIES)

import json
import os

import numpy as np
import pytest

import prepare as prep
import sources
import tokenizer as tok
from configurator import UserError
from prepare import PrepareConfig, prepare
from shards import open_shard, read_meta, shard_paths, write_shard
from sources import SourceConfig


def run_prepare(root, inputs, text_column="text", **kw):
    kw.setdefault("num_proc", 1)
    source = SourceConfig(input=[str(i) for i in inputs], text_column=text_column)
    return prepare(PrepareConfig(data_root=str(root), **kw), [source])


def all_tokens(data_dir, split):
    paths = shard_paths(data_dir, split)
    return np.concatenate([np.asarray(open_shard(p)) for p in paths]) if paths else np.zeros(0, np.int64)


@pytest.mark.parametrize("kind", ["char", "gpt2"])
def test_shards_round_trip_to_the_text_plus_end_of_text(tmp_path, shakespeare_text, kind):
    from conftest import SHAKESPEARE
    meta = run_prepare(tmp_path, [SHAKESPEARE], tokenizer=kind, name="s")
    d = tmp_path / "s"
    t = tok.from_meta(read_meta(str(d))["tokenizer"])
    tokens = np.concatenate([all_tokens(d, "train"), all_tokens(d, "val")])
    assert t.decode(tokens.tolist()) == shakespeare_text + "<|endoftext|>"
    # the val split is the last 10% of the text, cut by characters before tokenizing, as nanoGPT does
    val = t.decode(all_tokens(d, "val").tolist())
    assert val == shakespeare_text[int(len(shakespeare_text) * 0.9):] + "<|endoftext|>"
    if kind == "char":  # nanoGPT's shakespeare_char: 1,003,854 train and 111,540 val characters
        assert meta["tokenizer"]["vocab_size"] == 66  # 65 characters + end-of-text
        assert (meta["counts"]["train"]["tokens"], meta["counts"]["val"]["tokens"]) == (1003854, 111540 + 1)


def test_long_documents_are_tokenized_in_pieces_without_changing_tokens(monkeypatch, shakespeare_text):
    monkeypatch.setattr(prep, "PIECE_CHARS", 5000)
    stats = prep.Stats()
    pieces = list(prep.pieces([(shakespeare_text, True)], stats))
    assert len(pieces) > 100 and "".join(p for p, _ in pieces) == shakespeare_text
    gpt2 = tok.GPT2Tokenizer()
    joined = [i for p, _ in pieces for i in gpt2.encode(p)]
    assert joined == gpt2.encode(shakespeare_text)


def test_parallel_and_serial_tokenization_write_the_same_shards(tmp_path, shakespeare_text):
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(json.dumps({"text": shakespeare_text[i:i + 3000]}) for i in range(0, 300000, 3000)))
    run_prepare(tmp_path, [f], name="one", num_proc=1)
    run_prepare(tmp_path, [f], name="two", num_proc=2)
    for split in ("train", "val"):
        assert np.array_equal(all_tokens(tmp_path / "one", split), all_tokens(tmp_path / "two", split))


def test_jsonl_folders_globs_and_text_column(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.jsonl").write_text('{"content": "beta"}\n\n{"content": "gamma"}\n')
    (src / "ignored.csv").write_text("x")
    meta = run_prepare(tmp_path, [src], name="d", tokenizer="char", text_column="content", val_fraction=0.0)
    assert meta["documents"] == 3
    t = tok.from_meta(meta["tokenizer"])
    assert t.decode(all_tokens(tmp_path / "d", "train").tolist()) == \
        "alpha<|endoftext|>beta<|endoftext|>gamma<|endoftext|>"
    meta = run_prepare(tmp_path, [str(src / "**" / "*.jsonl")], name="g", text_column="content", val_fraction=0.0)
    assert meta["documents"] == 2
    with pytest.raises(UserError, match=r"no field 'text' \(found \['content'\]\).*--text_column"):
        run_prepare(tmp_path, [src / "sub" / "b.jsonl"], name="e")


def test_empty_documents_are_skipped_and_invalid_utf8_replaced(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"text": "one"}\n{"text": ""}\n{"text": "   "}\n{"text": "two"}\n')
    meta = run_prepare(tmp_path, [f], name="d", tokenizer="char", val_fraction=0.0)
    assert (meta["documents"], meta["skipped_empty_documents"]) == (4, 2)
    g = tmp_path / "bad.txt"
    g.write_bytes(b"caf\xc3\xa9 \xff\xfe ok \xef\xbf\xbd")  # two bad bytes, and one real U+FFFD
    meta = run_prepare(tmp_path, [g], name="u", tokenizer="char", val_fraction=0.0)
    assert meta["invalid_utf8_replaced"] == 2


@pytest.mark.parametrize("content, msg", [
    ("", "no text to tokenize"),
    ("  \n\n ", "no text to tokenize"),
])
def test_empty_input_is_a_clear_error(tmp_path, content, msg):
    f = tmp_path / "empty.txt"
    f.write_text(content)
    with pytest.raises(UserError, match=msg):
        run_prepare(tmp_path, [f], name="d")
    assert not (tmp_path / "d").exists()


def test_missing_input_and_bad_options(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        run_prepare(tmp_path, [tmp_path / "nope.txt"])
    f = tmp_path / "a.txt"
    f.write_text("hello")
    with pytest.raises(UserError, match="--tokenizer 'bpe2'"):
        run_prepare(tmp_path, [f], tokenizer="bpe2")
    with pytest.raises(UserError, match="--val_fraction"):
        run_prepare(tmp_path, [f], val_fraction=1.5)


def test_existing_dataset_is_kept_unless_overwrite(tmp_path):
    a, bad = tmp_path / "a.txt", tmp_path / "bad.jsonl"
    a.write_text("first version " * 100)
    bad.write_text('{"text": "fine"}\nnot json\n')
    run_prepare(tmp_path, [a], name="d", tokenizer="char")
    before = {p: open(p, "rb").read() for p in sorted((tmp_path / "d").iterdir())}
    with pytest.raises(UserError, match="already prepared.*--overwrite"):
        run_prepare(tmp_path, [a], name="d")
    with pytest.raises(UserError, match="bad.jsonl:2: not valid JSON"):
        run_prepare(tmp_path, [bad], name="d", overwrite=True)  # fails part way: the old data stays
    assert {p: open(p, "rb").read() for p in sorted((tmp_path / "d").iterdir())} == before
    a.write_text("second " * 10)
    meta = run_prepare(tmp_path, [a], name="d", tokenizer="char", overwrite=True)
    assert meta["counts"]["train"]["tokens"] + meta["counts"]["val"]["tokens"] == 71


def test_shard_reader_refuses_truncated_and_foreign_files(tmp_path):
    p = str(tmp_path / "train_000000.bin")
    write_shard(p, np.arange(1000) % 50, vocab_size=50)
    assert np.array_equal(open_shard(p), np.arange(1000) % 50)
    data = open(p, "rb").read()
    open(p, "wb").write(data[:-10])
    with pytest.raises(UserError, match="truncated or corrupt"):
        open_shard(p)
    open(p, "wb").write(b"x" * 5000)
    with pytest.raises(UserError, match="not a token shard"):
        open_shard(p)


def test_large_vocabularies_use_uint32_and_ids_out_of_range_are_refused(tmp_path):
    p = str(tmp_path / "train_000000.bin")
    write_shard(p, [0, 70000, 99999], vocab_size=100000)
    s = open_shard(p)
    assert s.dtype.itemsize == 4 and s.tolist() == [0, 70000, 99999]
    with pytest.raises(ValueError, match="out of range"):
        write_shard(p, [0, 50257], vocab_size=50257)


def test_hub_unreachable_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub.*--input"):
        prepare(PrepareConfig(data_root=str(tmp_path)))
    assert not (tmp_path / "tinystories").exists()


def test_default_source_uses_the_hub_dataset_and_its_validation_split(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    stories = [f"Once upon a time there was a cat number {i}." for i in range(50)]
    fake = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": stories[:40]}),
        "validation": datasets.Dataset.from_dict({"text": stories[40:]}),
    })
    asked = []
    monkeypatch.setattr(sources, "check_hub_reachable", lambda name: asked.append(name))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: fake)
    meta = prepare(PrepareConfig(data_root=str(tmp_path), num_proc=1))
    assert asked == ["roneneldan/TinyStories"] and meta["name"] == "tinystories"
    assert meta["sources"][0]["val"] == "own split" and meta["sources"][0]["dataset"] == "roneneldan/TinyStories"
    t = tok.GPT2Tokenizer()
    val = t.decode(all_tokens(tmp_path / "tinystories", "val").tolist())
    assert val == "".join(s + "<|endoftext|>" for s in stories[40:])
    with pytest.raises(UserError, match=r"no column 'story' \(columns: \['text'\]\)"):
        prepare(PrepareConfig(data_root=str(tmp_path), name="x", num_proc=1),
                [SourceConfig(dataset="roneneldan/TinyStories", text_column="story")])


def test_overwrite_keeps_your_files_in_the_folder_even_an_input_there(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "input.txt").write_text("first version " * 50)  # nanoGPT's layout: the raw text in the dataset's folder
    (d / "notes").mkdir()
    (d / "notes" / "todo.md").write_text("mine")
    run_prepare(tmp_path, [d / "input.txt"], name="d", tokenizer="char")
    (d / "input.txt").write_text("second " * 10)
    meta = run_prepare(tmp_path, [d / "input.txt"], name="d", tokenizer="char", overwrite=True)
    assert meta["counts"]["train"]["tokens"] + meta["counts"]["val"]["tokens"] == 71
    assert (d / "input.txt").read_text() == "second " * 10 and (d / "notes" / "todo.md").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["d"]  # no work folder, old folder or lock left


def test_a_crash_between_the_two_renames_leaves_the_old_dataset_and_the_next_run_restores_it(tmp_path, monkeypatch):
    a = tmp_path / "a.txt"
    a.write_text("old text " * 100)
    run_prepare(tmp_path / "data", [a], name="d", tokenizer="char")
    d = tmp_path / "data" / "d"
    (d / "mine.txt").write_text("mine")
    before = {p: open(os.path.join(d, p), "rb").read() for p in sorted(os.listdir(d))}
    real = os.replace

    def replace(src, dst):  # Ctrl-C just after the old folder stepped aside
        if str(src).endswith(".d.partial"):
            raise KeyboardInterrupt
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(tmp_path / "data", [a], name="d", tokenizer="gpt2", overwrite=True)
    monkeypatch.setattr(os, "replace", real)
    assert {p: open(os.path.join(d, p), "rb").read() for p in sorted(os.listdir(d))} == before
    assert sorted(os.listdir(tmp_path / "data")) == ["d"]
    # a SIGKILL at that moment leaves the old dataset aside (and the new one unpublished) instead:
    real(d, tmp_path / "data" / ".d.old")
    (tmp_path / "data" / ".d.partial").mkdir()
    with pytest.raises(UserError, match="data/d has no meta.json|dataset folder .*data/d not found"):
        read_meta(str(d))
    with pytest.raises(UserError, match="already prepared"):  # the next prepare puts it back first
        run_prepare(tmp_path / "data", [a], name="d", tokenizer="char")
    assert {p: open(os.path.join(d, p), "rb").read() for p in sorted(os.listdir(d))} == before
    assert sorted(os.listdir(tmp_path / "data")) == ["d"]


def test_a_crash_after_publishing_finishes_moving_your_files_on_the_next_run(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("some text " * 100)
    root = tmp_path / "data"
    run_prepare(root, [a], name="d", tokenizer="char")
    run_prepare(root, [a], name="d2", tokenizer="char")
    os.rename(root / "d", root / ".d.old")  # the state a kill leaves just after the second rename:
    os.rename(root / "d2", root / "d")      # the new dataset published, your file still in the old folder
    (root / ".d.old" / "mine.txt").write_text("mine")
    with pytest.raises(UserError, match="already prepared"):
        run_prepare(root, [a], name="d", tokenizer="char")
    assert (root / "d" / "mine.txt").read_text() == "mine" and sorted(os.listdir(root)) == ["d"]


def test_a_symlinked_dataset_folder_is_replaced_where_it_points(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("some text " * 100)
    (tmp_path / "big").mkdir()
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "big" / "d", tmp_path / "data" / "d")  # data on another disk
    (tmp_path / "big" / "d").mkdir()
    run_prepare(tmp_path / "data", [a], name="d", tokenizer="char")
    meta = run_prepare(tmp_path / "data", [a], name="d", tokenizer="gpt2", overwrite=True)
    assert os.path.islink(tmp_path / "data" / "d") and read_meta(str(tmp_path / "big" / "d")) == meta
    assert sorted(os.listdir(tmp_path / "big")) == ["d"]


def test_check_tokens_reads_a_sample_and_catches_damaged_data(tmp_path):
    from shards import HEADER_BYTES, check_tokens
    p = str(tmp_path / "train_000000.bin")
    n = 200_000
    write_shard(p, np.arange(n) % 50, vocab_size=50)
    assert check_tokens(p, 50) == n
    with pytest.raises(UserError, match="train_000000.bin holds token id 49, but the vocabulary has 40 ids"):
        check_tokens(p, 40)  # another tokenizer's data: the header tells
    data = bytearray(open(p, "rb").read())
    rng = np.random.default_rng(0)
    for _ in range(5):  # a damaged tenth of the file, anywhere: the sample's 16 blocks cannot all miss it
        start = int(rng.integers(0, n - n // 10))
        bad = bytearray(data)
        bad[HEADER_BYTES + 2 * start:HEADER_BYTES + 2 * (start + n // 10)] = b"\xff" * (2 * (n // 10))
        open(p, "wb").write(bad)
        with pytest.raises(UserError, match=r"train_000000.bin is corrupt: token [\d,]+ is id 65535, above the "
                                            r"largest id its header records \(49\)"):
            check_tokens(p, 50)
    bad = bytearray(data)
    bad[HEADER_BYTES + 2 * 12345:HEADER_BYTES + 2 * 12346] = b"\xff\xff"  # one token: only a full read finds it
    open(p, "wb").write(bad)
    with pytest.raises(UserError, match="token 12,345 is id 65535"):
        check_tokens(p, 50, sample=None)

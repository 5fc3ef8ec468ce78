"""The bad-input catalogue of the data side: prepare.py and plan.py as a hostile user runs them, and
the damaged datasets train.py reads. Every case runs the script's main in-process, as its command
line does, and must give a non-zero exit, one `error:` line naming the key or path, no traceback,
and leave every file that existed before byte for byte as it was (the prepared dataset `old`,
the inputs, the lock of a running prepare)."""

import errno
import fcntl
import json
import os

import pytest

import plan
import prepare as prep
import safeio
import shards
import train
from conftest import FullDisk, assert_one_line_error, run_main, snapshot
from prepare import PrepareConfig, prepare
from sources import SourceConfig


class World:
    """tmp/in/a.txt (4 KB of Shakespeare), tmp/in/b.txt, and tmp/data/old: a prepared char dataset."""

    def __init__(self, tmp, text):
        self.tmp, self.inp, self.root = tmp, tmp / "in", tmp / "data"
        self.inp.mkdir()
        (self.inp / "a.txt").write_text(text[:4000], encoding="utf-8")
        (self.inp / "b.txt").write_text(text[4000:8000], encoding="utf-8")
        prepare(PrepareConfig(tokenizer="char", name="old", data_root=str(self.root), num_proc=1),
                [SourceConfig(input=[str(self.inp / "a.txt")])])
        self.old = self.root / "old"
        self.held = []

    def fill(self, argv):
        return [a.format(in_=self.inp, root=self.root, tmp=self.tmp) for a in argv]


@pytest.fixture
def world(tmp_path, shakespeare_text):
    w = World(tmp_path, shakespeare_text)
    yield w
    for f in w.held:
        f.close()


# --- setups: what a case does to the world (or the machine) before the command runs -------------

def write(rel, data):
    def setup(w, mp):
        path = w.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def edit_meta(change):
    def setup(w, mp):
        path = w.old / "meta.json"
        path.write_bytes(change(path.read_bytes()))
    return setup


def edit_shard(change):
    def setup(w, mp):
        path = w.old / "train_000000.bin"
        path.write_bytes(change(path.read_bytes()))
    return setup


def meta_json(fn):
    return edit_meta(lambda b: json.dumps(fn(json.loads(b))).encode())


def disk_full(module, suffix, room=0):
    """Writes to files ending in suffix, opened by module, fail with ENOSPC after room bytes."""
    def setup(w, mp):
        real = open

        def fake_open(path, mode="r", *a, **k):
            f = real(path, mode, *a, **k)
            return FullDisk(f, room) if str(path).endswith(suffix) and ("w" in mode or "x" in mode) else f
        mp.setattr(module, "open", fake_open, raising=False)
    return setup


def read_only(folder):
    """mkdir inside tmp/<folder> fails as on a read-only folder (the tests run as root, so chmod
    would not stop them)."""
    def setup(w, mp):
        real = os.mkdir
        ro = str(w.tmp / folder)
        real(ro)

        def fake_mkdir(path, *a, **k):
            if os.path.dirname(os.path.abspath(path)) == ro:
                raise PermissionError(errno.EROFS, "Read-only file system", str(path))
            return real(path, *a, **k)
        mp.setattr(os, "mkdir", fake_mkdir)
    return setup


def lock_held(name):
    """Another prepare (pid 4242) holds the lock on name."""
    def setup(w, mp):
        f = open(w.root / f".{name}.lock", "a+")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("4242")
        f.flush()
        w.held.append(f)
    return setup


def symlink(rel):
    """rel is a symlink to tmp/victim.txt (which must stay as it is)."""
    def setup(w, mp):
        (w.tmp / "victim.txt").write_text("precious")
        (w.tmp / rel).symlink_to(w.tmp / "victim.txt")
    return setup


def bad_ids(n):
    """n token ids past the header's largest, a third of the way into the train shard."""
    def change(b):
        at = shards.HEADER_BYTES + 2 * (len(b) - shards.HEADER_BYTES) // 6
        return b[:at] + b"\xff\xff" * n + b[at + 2 * n:]
    return edit_shard(change)


# --- the catalogue --------------------------------------------------------------------------------

BASE = ["--data_root", "{root}", "--num_proc", "1", "--tokenizer", "char"]
A = ["--input", "{in_}/a.txt"]
B = ["--input", "{in_}/b.txt"]
OVER = ["--name", "old", "--overwrite"]  # every failure below must leave data/old as it was

PREPARE = [
    # where the dataset goes
    ("name-dotdot", A + ["--name", "../../x"], None, ["--name '../../x'"]),
    ("name-absolute", A + ["--name", "/tmp/abs/x"], None, ["--name '/tmp/abs/x'"]),
    ("name-dot", A + ["--name", "."], None, ["--name '.'"]),
    ("name-slash", A + ["--name", "a/b"], None, ["--name 'a/b'"]),
    ("name-blank", A + ["--name", "  "], None, ["--name '  '"]),
    ("name-hidden", A + ["--name", ".old.partial"], None, ["--name '.old.partial'"]),
    ("name-from-hidden-file", ["--input", "{tmp}/.notes.txt"], write(".notes.txt", "some text"),
     ["name taken from the first source", ".notes"]),
    ("already-prepared", A + ["--name", "old"], None, ["data/old is already prepared", "--overwrite"]),
    ("name-is-a-file", A + ["--name", "f"], write("data/f", "not a folder"), ["data/f exists and is not a folder"]),
    ("data-root-empty", A + ["--data_root", ""], None, ["--data_root ''"]),
    ("data-root-is-a-file", A + ["--data_root", "{in_}/b.txt"], None, ["--data_root", "b.txt", "not a folder"]),
    ("data-root-read-only-parent", A + ["--data_root", "{tmp}/ro/data", "--name", "x"], read_only("ro"),
     ["cannot write in", "/ro (Read-only file system)"]),
    ("locked-by-another-prepare", A + OVER, lock_held("old"), ["another prepare.py (pid 4242)", "data/old"]),
    # options
    ("tokenizer-unknown", A + ["--tokenizer", "words"], None, ["--tokenizer 'words'"]),
    ("unknown-key", A + ["--wieght", "1"], None, ["'wieght'", "'weight'"]),
    ("val-fraction-1", A + ["--val_fraction", "1"], None, ["--val_fraction 1"]),
    ("val-fraction-2", A + ["--val_fraction", "2"], None, ["--val_fraction 2"]),
    ("val-fraction-negative", A + ["--val_fraction", "-0.1"], None, ["--val_fraction -0.1"]),
    ("val-fraction-nan", A + ["--val_fraction", "nan"], None, ["val_fraction"]),
    ("max-tokens-negative", A + ["--max_tokens", "-1"], None, ["--max_tokens -1"]),
    ("max-tokens-inf", A + ["--max_tokens", "1e400"], None, ["max_tokens", "integer"]),
    ("shard-tokens-0", A + ["--shard_tokens", "0"], None, ["--shard_tokens 0"]),
    ("max-tokens-string-in-config", ["{tmp}/c.py"] + A, write("c.py", "max_tokens = '5000'\n"), ["max_tokens"]),
    ("num-proc-negative", A + ["--num_proc", "-1"], None, ["--num_proc -1"]),
    ("seed-negative", A + B + ["--seed", "-1"], None, ["--seed -1"]),
    ("bpe-vocab-0", A + ["--tokenizer", "bpe", "--vocab_size", "0"], None, ["--vocab_size 0"]),
    ("weight-inf", A + ["--weight", "1e400"] + B + ["--weight", "1"], None, ["--weight inf", "a.txt"]),
    ("weight-nan", A + ["--weight", "nan"] + B + ["--weight", "1"], None, ["weight='nan'"]),
    ("weight-zero", A + ["--weight", "0"] + B + ["--weight", "1"], None, ["--weight 0"]),
    ("weight-on-one-source", A + ["--weight", "1"] + B, None, ["--weight to every source"]),
    # inputs
    ("input-missing", ["--input", "{in_}/nope.txt"], None, ["nope.txt: no such file"]),
    ("glob-matches-nothing", ["--input", "{in_}/*.md"], None, ["*.md: no such file"]),
    ("folder-without-text", ["--input", "{tmp}/pics"], write("pics/x.png", b"\x89PNG"), ["pics has no .txt"]),
    ("empty-file", ["--input", "{tmp}/e.txt"] + OVER, write("e.txt", ""), ["no text to tokenize", "e.txt"]),
    ("blank-file", ["--input", "{tmp}/e.txt"] + OVER, write("e.txt", " \n\n\t"), ["no text to tokenize"]),
    ("folder-of-empty-files", ["--input", "{tmp}/empty"] + OVER, write("empty/x.txt", ""), ["no text to tokenize"]),
    ("binary-file", ["--input", "{tmp}/x.txt"] + OVER, write("x.txt", bytes(range(256)) * 40), ["x.txt is not text"]),
    ("utf16-file", ["--input", "{tmp}/u.txt"] + OVER, write("u.txt", "hello".encode("utf-16")), ["u.txt is not text"]),
    ("jsonl-bad-line", ["--input", "{tmp}/d.jsonl"] + OVER, write("d.jsonl", '{"text": "ok"}\nnot json\n'),
     ["d.jsonl:2: not valid JSON"]),
    ("jsonl-no-field", ["--input", "{tmp}/d.jsonl"] + OVER, write("d.jsonl", '{"body": "ok"}\n'),
     ["d.jsonl:1: no field 'text'"]),
    ("jsonl-not-objects", ["--input", "{tmp}/d.jsonl"] + OVER, write("d.jsonl", '[1, 2]\n'), ["d.jsonl:1"]),
    ("jsonl-text-a-number", ["--input", "{tmp}/d.jsonl"] + OVER, write("d.jsonl", '{"text": "ok"}\n{"text": 5}\n'),
     ["d.jsonl:2", "field 'text' is 5, not a string"]),
    ("jsonl-text-a-list", ["--input", "{tmp}/d.jsonl"] + OVER, write("d.jsonl", '{"text": ["a"]}\n'),
     ["d.jsonl:1", "not a string"]),
    ("jsonl-text-null", ["--input", "{tmp}/d.jsonl"] + OVER, write("d.jsonl", '{"text": null}\n'),
     ["d.jsonl:1", "not a string"]),
    ("jsonl-deep-nesting", ["--input", "{tmp}/d.jsonl"] + OVER, write("d.jsonl", "[" * 100000 + "]" * 100000 + "\n"),
     ["d.jsonl:1", "nested too deeply"]),
    ("lock-is-a-symlink", A + OVER, symlink("data/.old.lock"), [".old.lock", "symbolic link"]),
    ("lock-is-a-folder", A + OVER, write("data/.old.lock/x", "mine"), [".old.lock", "is a folder"]),
    # the disk fills up: at each stage of the writing, the old dataset stays whole
    ("disk-full-tokenizing", A + OVER, disk_full(prep, ".flat"), ["no space left", "data/old is as it was"]),
    ("disk-full-shards", A + OVER, disk_full(safeio, ".bin.tmp", room=2000), ["no space left", "data/old is as it was"]),
    ("disk-full-meta", A + OVER, disk_full(safeio, "meta.json.tmp"), ["no space left", "data/old is as it was"]),
    ("disk-full-new-name", A + ["--name", "new"], disk_full(safeio, ".bin.tmp"), ["no space left", "nothing was written"]),
]

PLAN = [
    ("flops-1e400", ["--flops", "1e400"], None, ["--flops inf"]),
    ("flops-inf-word", ["--flops", "inf"], None, ["flops='inf'"]),
    ("flops-nan-word", ["--flops", "nan"], None, ["flops='nan'"]),
    ("flops-nan-config", ["{tmp}/nan.py"], write("nan.py", "flops = float('nan')\n"), ["--flops nan"]),
    ("flops-negative", ["--flops", "-1e18"], None, ["--flops -1e+18"]),
    ("flops-0", ["--flops", "0"], None, ["exactly one of --flops"]),
    ("flops-tiny", ["--flops", "1e-300"], None, ["--flops 1e-300", "outside the fit"]),
    ("tokens-overflow", ["--tokens", "1e300"], None, ["--tokens 1e+300", "outside the fit"]),
    ("params-1e400", ["--params", "1e400"], None, ["--params inf"]),
    ("hours-1e400", ["--hours", "1e400", "--tokens_per_sec", "1e5", "--measured_params", "1e8"], None, ["--hours inf"]),
    ("hours-alone", ["--hours", "3"], None, ["--hours needs --tokens_per_sec"]),
    ("two-budgets", ["--flops", "1e18", "--tokens", "1e9"], None, ["exactly one of"]),
    ("batch-tokens-0", ["--flops", "1e18", "--batch_tokens", "0"], None, ["--batch_tokens 0"]),
    ("vocab-size-negative", ["--flops", "1e18", "--vocab_size", "-5"], None, ["--vocab_size -5"]),
    ("tokens-1", ["--tokens", "1"], None, ["--tokens 1", "outside the fit"]),
    ("params-1e30", ["--params", "1e30"], None, ["--params 1e+30", "outside the fit"]),
    ("params-10", ["--params", "10"], None, ["--params 10", "outside the fit"]),
]

TRAIN = ["--dataset", "old", "--data_root", "{root}", "--out_dir", "{tmp}/out", "--device", "cpu", "--n_layer", "1",
         "--n_head", "1", "--n_embd", "8", "--block_size", "8", "--batch_size", "2", "--max_iters", "1",
         "--eval_iters", "1", "--compile", "False", "--sample_tokens", "0", "--plot", "False"]

DAMAGED = [  # a prepared dataset damaged after the fact, as train.py (and eval.py, sample.py) read it
    ("meta-truncated", edit_meta(lambda b: b[:len(b) // 2]), ["old/meta.json is damaged", "--overwrite"]),
    ("meta-not-utf8", edit_meta(lambda b: b"\xff\xfe" + b), ["old/meta.json is damaged"]),
    ("meta-empty", edit_meta(lambda b: b""), ["old/meta.json is damaged"]),
    ("meta-a-list", meta_json(lambda m: [m]), ["old/meta.json holds a JSON list"]),
    ("meta-no-tokenizer", meta_json(lambda m: {k: v for k, v in m.items() if k != "tokenizer"}), ["'tokenizer'"]),
    ("meta-tokenizer-a-string", meta_json(lambda m: {**m, "tokenizer": "char"}), ["'tokenizer'"]),
    ("meta-char-without-chars", meta_json(lambda m: {**m, "tokenizer": {"kind": "char", "vocab_size": 66, "eot_id": 65}}),
     ["'tokenizer'"]),
    ("meta-eot-out-of-range", meta_json(lambda m: {**m, "tokenizer": {**m["tokenizer"], "eot_id": 10**6}}),
     ["vocab_size and eot_id"]),
    ("meta-no-counts", meta_json(lambda m: {k: v for k, v in m.items() if k != "counts"}), ["'counts'"]),
    ("meta-other-version", meta_json(lambda m: {**m, "format_version": 2}), ["format_version 2", "reads 1"]),
    ("meta-vocab-beside-char-table", meta_json(lambda m: {**m, "tokenizer": {**m["tokenizer"], "vocab_size": 1000}}),
     ["vocab_size=1000", "char table"]),
    ("meta-vocab-a-string", meta_json(lambda m: {**m, "tokenizer": {**m["tokenizer"], "vocab_size": "66"}}),
     ["vocab_size"]),
    ("meta-chars-a-list", meta_json(lambda m: {**m, "tokenizer": {**m["tokenizer"], "chars": list("ab")}}),
     ["chars"]),
    ("meta-negative-count", meta_json(lambda m: {**m, "counts": {**m["counts"], "train": {"tokens": -5}}}),
     ["tokens=-5"]),
    ("shard-three-ids-past-its-header", bad_ids(3), ["train_000000.bin is corrupt", "above the largest id"]),
    ("shard-other-version", edit_shard(lambda b: b[:4] + (2).to_bytes(4, "little") + b[8:]),
     ["train_000000.bin has shard format version 2"]),
    ("shard-truncated", edit_shard(lambda b: b[:-7]), ["train_000000.bin is truncated or corrupt"]),
    ("shard-foreign", edit_shard(lambda b: b"PK\x03\x04" + b[4:]), ["train_000000.bin is not a token shard"]),
]

CASES = ([pytest.param(prep.main, BASE + argv, setup, frags, id="prepare-" + name)
          for name, argv, setup, frags in PREPARE]
         + [pytest.param(plan.main, argv, setup, frags, id="plan-" + name) for name, argv, setup, frags in PLAN]
         + [pytest.param(train.main, TRAIN, setup, frags, id="train-" + name) for name, setup, frags in DAMAGED])


@pytest.mark.parametrize("main, argv, setup, fragments", CASES)
def test_bad_input_is_one_line_and_changes_nothing(world, monkeypatch, capsys, main, argv, setup, fragments):
    monkeypatch.chdir(world.tmp)  # the error names paths as given: data/old, in/a.txt
    world.root, world.inp = world.root.relative_to(world.tmp), world.inp.relative_to(world.tmp)
    world.old = world.root / "old"
    if setup:
        setup(world, monkeypatch)
    before = files()
    code, out, err = run_main(main, world.fill(argv), capsys)
    assert_one_line_error(code, err, *fragments)
    after = files()
    assert {p: after.get(p) for p in before} == before  # nothing that was there has changed
    assert set(after) - set(before) == set(), "a failed command left files behind"
    assert not [n for n in os.listdir(world.root) if n.endswith((".partial", ".old"))], "a work folder was left"


def files():
    """{path: bytes} under the current folder, but for train.py's out_dir (its own business)."""
    return {p: b for p, b in snapshot(".").items() if not p.startswith("./out/")}


def interrupt(*args):
    raise KeyboardInterrupt


def test_ctrl_c_mid_prepare_leaves_the_old_dataset_and_a_rerun_works(world, monkeypatch, capsys):
    argv = world.fill(BASE + B + OVER)
    before = snapshot(world.tmp)
    real = shards.ShardWriter.write
    monkeypatch.setattr(shards.ShardWriter, "write", interrupt)
    code, _, err = run_main(prep.main, argv, capsys)
    assert (code, err.strip()) == (130, "interrupted")
    assert snapshot(world.tmp) == before and sorted(os.listdir(world.root)) == ["old"]
    monkeypatch.setattr(shards.ShardWriter, "write", real)
    code, out, err = run_main(prep.main, argv, capsys)
    assert code == 0 and "wrote" in out
    assert sorted(os.listdir(world.root)) == ["old"]
    assert json.load(open(world.root / "old" / "meta.json"))["sources"][0]["inputs"] == [f"{world.inp}/b.txt"]


def test_resume_on_changed_data_is_refused_unless_allowed(world, monkeypatch, capsys):
    """prepare.py --overwrite replaced the dataset under a run: its resume says so in one line and changes
    nothing; --allow_data_change=True continues on the new data (and is not inherited by a later resume)."""
    monkeypatch.chdir(world.tmp)
    args = [a.format(root="data", tmp=".") for a in TRAIN]
    assert run_main(train.main, args, capsys)[0] == 0
    code, _, _ = run_main(prep.main, ["--data_root", "data", "--num_proc", "1", "--tokenizer", "char", "--input",
                                      "in/a.txt", "--name", "old", "--overwrite"], capsys)
    assert code == 0
    before = snapshot(".")
    resume = ["--init_from=resume", "--out_dir=./out", "--max_iters=2"]
    code, _, err = run_main(train.main, resume, capsys)
    assert_one_line_error(code, err, "the data changed", "data/old", "--allow_data_change=True")
    assert snapshot(".") == before
    assert run_main(train.main, resume + ["--allow_data_change=True"], capsys)[0] == 0
    import checkpoint
    assert checkpoint.load("out/ckpt.pt")["config"]["allow_data_change"] is True
    code, _, err = run_main(train.main, ["--init_from=resume", "--out_dir=./out", "--max_iters=3"], capsys)
    assert code == 0  # the data is the one it now trained on


def test_max_tokens_caps_a_single_document(world, monkeypatch, capsys):
    monkeypatch.chdir(world.tmp)
    code, out, err = run_main(prep.main, ["--data_root", "data", "--num_proc", "1", "--tokenizer", "char", "--input",
                                          "in/a.txt", "--name", "capped", "--max_tokens", "1000"], capsys)
    assert code == 0, err
    meta = json.load(open("data/capped/meta.json"))
    assert meta["counts"]["train"]["tokens"] == 1000 == meta["max_tokens"]
    assert shards.read_header("data/capped/train_000000.bin")[1] == 1000

"""
Prepare a dataset: text -> tokens -> shards + meta.json in data/<name>/.

    python prepare.py                                      # TinyStories from the Hugging Face Hub
    python prepare.py --input assets/tinyshakespeare.txt --tokenizer char --name shakespeare_char
    python prepare.py --dataset wikimedia/wikipedia --config 20231101.en --split 'train[:10000]' \\
                      --dataset roneneldan/TinyStories --weight 0.5 ... --weight 0.5 --name mix
    python prepare.py --dataset HuggingFaceFW/fineweb --streaming --max_tokens 100_000_000 --tokenizer bpe

Each --dataset or --input starts a source; --config, --split, --text_column and --weight after it
belong to it. Every document ends with the end-of-text token. Tokenization runs on all cores;
memory stays bounded by the work in flight, not the corpus. The dataset is built in
data/.<name>.partial/ and published by renaming that folder to data/<name>/: an existing dataset is
only replaced with --overwrite, and stays whole until the new one is (see publish).
"""

import errno
import math
import os
import re
import shutil
import sys
import time
from array import array
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Optional

if __name__ == "__main__":  # Ctrl-C while the imports load exits quietly; run() gives it back its usual meaning
    __import__("configurator").quiet_interrupts()
import numpy as np

import tokenizer as tok
from configurator import UserError, format_help, parse_args, run, unknown_key
from shards import ShardWriter, hold_lock, release_lock, token_dtype, write_meta, VERSION
from sources import Source, SourceConfig

DEFAULT_DATASET = "roneneldan/TinyStories"
PIECE_CHARS = 1 << 20  # long documents are tokenized in pieces of about this many characters


@dataclass
class PrepareConfig:
    """Tokenize text into shards for train.py: TinyStories by default, or --input files, or --dataset NAME
    (repeat --dataset / --input to mix several sources)."""
    name: str = ""  # output folder data/<name>/, one folder name (default: from the first source, e.g. tinystories)
    tokenizer: str = "gpt2"  # gpt2 (GPT-2 BPE through tiktoken), char (one id per character seen), or bpe (trained here)
    vocab_size: int = 8192  # vocabulary of a trained bpe tokenizer
    val_fraction: Optional[float] = None  # for sources without a validation split: the last fraction of the text held out (default 0.1)
    streaming: bool = False  # stream Hub datasets instead of downloading them first (for corpora larger than your disk cache)
    max_tokens: int = 0  # cap on the training tokens taken, over all sources (0: no cap)
    seed: int = 1337  # the document order of a mix of sources
    data_root: str = "data"  # where prepared datasets go
    num_proc: int = 0  # tokenizer processes (0: one per core)
    shard_tokens: int = 100_000_000  # tokens per shard file
    overwrite: bool = False  # replace an existing prepared dataset of the same name


class Stats:
    def __init__(self):
        self.documents = self.empty = 0


# ---------------------------------------------------------------------------
# command line: global options, then one group of options per source

SOURCE_KEYS = {f.name for f in fields(SourceConfig)}


def split_argv(argv):
    """(global arguments, [arguments of each source]): --dataset or --input starts a new source."""
    globals_, groups, current = [], [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key = arg[2:].partition("=")[0].replace("-", "_") if arg.startswith("--") else None
        j = i + 1
        if key is not None and "=" not in arg:  # the values that follow the flag belong to it
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
        if key in SOURCE_KEYS:
            starts = key in ("dataset", "input")
            if starts and any(a.startswith(("--dataset", "--input")) for a in current):
                groups.append(current)
                current = []
            current += argv[i:j]
        else:
            globals_ += argv[i:j]
        i = j
    if current:
        groups.append(current)
    return globals_, groups


def parse_command_line(argv):
    if any(a in ("-h", "--help") for a in argv):
        print(format_help(PrepareConfig, "prepare.py", "[--key=value ...] [--dataset NAME | --input PATH ...] "
                                                       "[source options] ..."))
        print("\n" + format_help(SourceConfig, "", "").split("\n", 2)[2])
        sys.exit(0)
    globals_, groups = split_argv(argv)
    valid = [f.name for f in fields(PrepareConfig)] + sorted(SOURCE_KEYS)
    for arg in globals_:  # say which key was meant, whether a global or a source option
        key = arg[2:].partition("=")[0].replace("-", "_") if arg.startswith("--") else None
        if key is not None and key not in valid:
            raise unknown_key(key, valid, "on the command line")
    cfg = parse_args(PrepareConfig, globals_, prog="prepare.py")
    specs = [parse_args(SourceConfig, g, prog="prepare.py") for g in groups] or [SourceConfig()]
    for s in specs:
        if not s.dataset and not s.input:
            s.dataset = DEFAULT_DATASET
    return cfg, specs


# ---------------------------------------------------------------------------
# tokenization: pieces -> worker processes -> token arrays, in order

def pieces(items, stats):
    """Split long texts so workers share them. A cut goes just before a newline that follows a
    non-space character: GPT-2's pre-tokenizer splits there whatever comes next, and its pattern looks
    only forward, so the pieces' tokens are exactly the whole text's."""
    for text, ends_doc in items:
        if ends_doc:
            stats.documents += 1
        if not text.strip():
            if ends_doc:
                stats.empty += 1
            continue
        start = 0
        while len(text) - start > PIECE_CHARS:
            cut = text.find("\n", start + PIECE_CHARS)
            while cut != -1 and text[cut - 1].isspace():
                cut = text.find("\n", cut + 1)
            if cut == -1:
                break
            yield text[start:cut], False
            start = cut
        yield text[start:], ends_doc


def batches(items, max_chars=PIECE_CHARS, max_items=1024):
    batch, size = [], 0
    for item in items:
        batch.append(item)
        size += len(item[0])
        if size >= max_chars or len(batch) >= max_items:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


_worker_tokenizer = None


def _init_worker(meta, in_pool=True):
    global _worker_tokenizer
    if in_pool:  # a worker process (not the main one tokenizing alone)
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent handles it
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # and ends the pool with SIGTERM, which must just end a worker
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process
    _worker_tokenizer = tok.from_meta(meta)


def encode_batch(batch):
    """(tokens, document ends): the tokens of a batch of pieces, with end-of-text after each document's
    last piece, and the position just after each end-of-text."""
    t = _worker_tokenizer
    dtype = token_dtype(t.vocab_size)
    out, ends, n = [], [], 0
    for ids, (_, last) in zip(t.encode_batch([text for text, _ in batch]), batch):
        out.append(np.asarray(ids, dtype=dtype))
        n += len(ids)
        if last:
            out.append(np.array([t.eot_id], dtype=dtype))
            n += 1
            ends.append(n)
    return (np.concatenate(out) if out else np.zeros(0, dtype)), ends


def parallel_map(fn, items, num_proc, initargs):
    """map(fn, items) in num_proc processes, in order, with a bounded number of items in flight."""
    if num_proc <= 1:
        _init_worker(*initargs, in_pool=False)
        yield from map(fn, items)
        return
    import multiprocessing as mp
    with mp.get_context("fork" if sys.platform == "linux" else "spawn").Pool(num_proc, _init_worker, initargs) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class Tokenized:
    """One source's split, tokenized into a flat file, with the position after each document."""

    def __init__(self, path, dtype):
        self.path, self.dtype, self.n, self.ends = path, dtype, 0, array("q")  # 8 bytes per document

    def data(self):
        return np.memmap(self.path, dtype=self.dtype, mode="r") if self.n else np.zeros(0, self.dtype)

    def documents(self):
        """(starts, ends) arrays of the documents; text cut off at the end of the stream counts as one."""
        ends = np.frombuffer(self.ends, dtype=np.int64) if len(self.ends) else np.zeros(0, np.int64)
        if not len(ends) or ends[-1] != self.n:
            ends = np.append(ends, self.n)
        starts = np.concatenate([[0], ends[:-1]])
        keep = ends > starts
        return starts[keep], ends[keep]


def tokenize(items, path, meta, num_proc, stats, progress, limit=0):
    """Tokenize (text, ends_document) items into a flat file; stop once `limit` tokens are in (0: never)."""
    out = Tokenized(path, token_dtype(meta["vocab_size"]))
    with open(path, "wb") as f:
        for arr, ends in parallel_map(encode_batch, batches(pieces(items, stats)), num_proc, (meta,)):
            f.write(arr.tobytes())
            out.ends.extend(out.n + e for e in ends)
            out.n += len(arr)
            progress.update(len(arr))
            if limit and out.n >= limit:
                break
        if limit and out.n > limit:  # the last batch overshot (one long document is one batch): cut it exactly
            f.truncate(limit * np.dtype(out.dtype).itemsize)
            out.n = limit
            out.ends = array("q", (e for e in out.ends if e <= limit))
    return out


def train_cap(cfg, weights, i, done):
    """How many training tokens to take from source i: 0 for all of them, None for none. --max_tokens
    is shared out by weight; without weights, sources fill it in turn."""
    if not cfg.max_tokens:
        return 0
    if weights:
        return max(1, round(cfg.max_tokens * weights[i]))
    left = cfg.max_tokens - sum(p.n for p in done)
    return left if left > 0 else None


def val_cap(train_cap, source):
    """Val tokens to go with a capped train split, in the source's train/val proportion."""
    if not train_cap or source.val_rule == "own split":
        return 0
    return max(1, round(train_cap * source.val_fraction / (1 - source.val_fraction)))


def build_tokenizer(cfg, sources):
    if cfg.tokenizer == "gpt2":
        return tok.GPT2Tokenizer()
    if cfg.tokenizer == "char":  # the table is every character seen, so look at all the text first
        return tok.CharTokenizer.from_texts(text for s in sources for split in ("train", "val") for text in s.documents(split))
    texts = (text for s in sources for text in s.documents("train"))
    if cfg.max_tokens:  # a stream may not end: learn from about the text that will be tokenized
        texts = _first_chars(texts, 5 * cfg.max_tokens)
    tokenizer = tok.BPETokenizer.train(texts, cfg.vocab_size)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # workers are forked next; each uses one core
    return tokenizer


def _first_chars(texts, limit):
    n = 0
    for t in texts:
        yield t
        n += len(t)
        if n >= limit:
            return


# ---------------------------------------------------------------------------
# mixing: documents from each source, in proportion to the weights, in a seeded order

def select_documents(parts, weights):
    """(source index, start, end) arrays per the weights: whole documents in source order, each source
    taking its share of the largest total that no source runs short of."""
    total = None if weights is None else min(p.n / w for p, w in zip(parts, weights))
    chosen = []
    for i, p in enumerate(parts):
        starts, ends = p.documents()
        if total is not None:  # the documents that begin before the source's quota is met
            keep = np.searchsorted(ends, weights[i] * total, side="left") + 1
            starts, ends = starts[:keep], ends[:keep]
        chosen.append(np.stack([np.full_like(starts, i), starts, ends], axis=1))
    return np.concatenate(chosen)


def write_split(parts, weights, seed, writer):
    """Write one split's tokens; several sources are mixed and shuffled at the document level."""
    if len(parts) == 1 and weights is None:  # one source: its order as it is (a book stays a book)
        data = parts[0].data()
        for s in range(0, parts[0].n, 1 << 24):
            writer.write(data[s:s + (1 << 24)])
        return writer.close()
    chosen = select_documents(parts, weights)
    data = [p.data() for p in parts]
    buffer, size = [], 0
    for i, a, b in chosen[np.random.default_rng(seed).permutation(len(chosen))]:
        buffer.append(data[i][a:b])
        size += b - a
        if size >= 1 << 20:  # write in chunks of ~1M tokens, not per document
            writer.write(np.concatenate(buffer))
            buffer, size = [], 0
    if buffer:
        writer.write(np.concatenate(buffer))
    return writer.close()


# ---------------------------------------------------------------------------

def check_options(cfg, specs):
    if cfg.tokenizer not in ("gpt2", "char", "bpe"):
        raise UserError(f"--tokenizer {cfg.tokenizer!r}: expected gpt2, char or bpe")
    if cfg.val_fraction is not None and not 0 <= cfg.val_fraction < 1:
        raise UserError(f"--val_fraction {cfg.val_fraction}: expected a number in [0, 1)")
    for key, low in (("shard_tokens", 1), ("max_tokens", 0), ("num_proc", 0), ("seed", 0)):
        if getattr(cfg, key) < low:
            raise UserError(f"--{key} {getattr(cfg, key)}: must be at least {low}"
                            + (" (0: one process per core)" if key == "num_proc" else ""))
    if cfg.tokenizer == "bpe" and not 258 <= cfg.vocab_size <= 2**31:
        raise UserError(f"--vocab_size {cfg.vocab_size}: a byte-level BPE needs at least 258 ids "
                        f"(256 bytes + 1 merge + end-of-text)")
    if not cfg.data_root or (os.path.exists(cfg.data_root) and not os.path.isdir(cfg.data_root)):
        raise UserError(f"--data_root {cfg.data_root!r} is not a folder: name the folder that holds prepared "
                        f"datasets (default: data)")
    weighted = [s.weight is not None for s in specs]
    if any(weighted) and not all(weighted):
        raise UserError("give a --weight to every source or to none")
    for s in specs:
        if s.weight is not None and not (math.isfinite(s.weight) and s.weight > 0):
            raise UserError(f"--weight {s.weight} of {s.dataset or ' '.join(s.input)}: must be a positive, finite number")


def check_name(name, given):
    """A dataset name is one plain folder name, so prepare.py writes only inside data_root."""
    if not name.strip() or name != name.strip() or name.startswith(".") or re.search(r"[/\\\x00-\x1f]", name):
        where = "--name" if given else "the name taken from the first source"
        raise UserError(f"{where} {name!r}: a dataset name is one folder name inside --data_root, not empty, "
                        f"without slashes, not starting with a dot (e.g. --name mydata)")


def default_name(cfg, sources):
    s = sources[0].spec
    base = os.path.basename(s.dataset).lower() if s.dataset else os.path.splitext(os.path.basename(sources[0].files[0]))[0]
    return base + ("" if cfg.tokenizer == "gpt2" else f"_{cfg.tokenizer}") + ("_mix" if len(sources) > 1 else "")


def prepare(cfg, specs=None):
    """Prepare a dataset from the sources in specs (default: TinyStories); returns its meta.json."""
    specs = specs or [SourceConfig(dataset=DEFAULT_DATASET)]
    check_options(cfg, specs)
    sources = [Source(s, cfg.streaming, cfg.val_fraction) for s in specs]
    name = cfg.name or default_name(cfg, sources)
    check_name(name, given=bool(cfg.name))
    out_dir = os.path.join(cfg.data_root, name)
    with writing(cfg.data_root, name) as (work, old, folder):
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise UserError(f"{out_dir} exists and is not a folder: move it, or choose another --name")
        if os.path.isfile(os.path.join(out_dir, "meta.json")) and not cfg.overwrite:
            raise UserError(f"{out_dir} is already prepared; pass --overwrite to replace it, or --name to choose another")
        meta = build(cfg, specs, sources, name, work)
        publish(work, old, folder, meta)
    return meta


def build(cfg, specs, sources, name, work):
    """Tokenize the sources into shards in the folder work; returns the dataset's meta.json."""
    weights = None
    if specs[0].weight is not None:
        weights = [s.weight / sum(x.weight for x in specs) for s in specs]

    t0 = time.time()
    tokenizer = build_tokenizer(cfg, sources)
    meta_tok = tokenizer.meta()
    num_proc = cfg.num_proc or os.cpu_count() or 1
    stats = Stats()
    parts = {"train": [], "val": []}
    from tqdm import tqdm
    with tqdm(unit="tok", unit_scale=True, desc=f"tokenizing ({num_proc} processes)", disable=None) as progress:
        for i, source in enumerate(sources):
            cap = train_cap(cfg, weights, i, parts["train"])
            for split in ("train", "val"):
                path = os.path.join(work, f"{i}.{split}.flat")
                if cap is None:  # the cap is full: nothing from this source
                    parts[split].append(Tokenized(path, token_dtype(tokenizer.vocab_size)))
                    continue
                limit = cap if split == "train" else val_cap(cap, source)
                parts[split].append(tokenize(source.pieces(split), path, meta_tok, num_proc, stats, progress, limit))
            if cap is not None and parts["train"][-1].n == 0:
                shutil.rmtree(work)
                raise UserError(f"no text to tokenize in {source.label}: its documents are all empty, "
                                f"or its split selects none")

    counts = {}
    for split in ("train", "val"):
        writer = ShardWriter(work, split, tokenizer.vocab_size, cfg.shard_tokens)
        n_shards, n_tokens = write_split(parts[split], weights, cfg.seed, writer)
        counts[split] = {"tokens": n_tokens, "shards": n_shards}
    for p in parts["train"] + parts["val"]:
        if os.path.exists(p.path):
            os.remove(p.path)
    if counts["train"]["tokens"] == 0:
        shutil.rmtree(work)
        raise UserError("no training tokens: the sources' train splits are empty")
    if tokenizer.kind == "bpe":
        with open(os.path.join(work, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(tokenizer.json)  # the same as meta.json's copy, for other tools

    meta = {
        "name": name,
        "format_version": VERSION,
        "tokenizer": meta_tok,
        "dtype": np.dtype(token_dtype(tokenizer.vocab_size)).name,
        "sources": [dict(s.describe(), train_tokens=parts["train"][i].n, val_tokens=parts["val"][i].n)
                    for i, s in enumerate(sources)],
        "mix": {"weights": weights, "seed": cfg.seed} if len(sources) > 1 or weights else None,
        "max_tokens": cfg.max_tokens or None,
        "counts": counts,
        "documents": stats.documents,
        "skipped_empty_documents": stats.empty,
        "invalid_utf8_replaced": sum(sum(s.bad_utf8.values()) for s in sources),
        "seconds": round(time.time() - t0, 2),
    }
    return meta


# ---------------------------------------------------------------------------
# publishing: build in data/.<name>.partial/, then rename; one prepare per name at a time

DATASET_FILE = re.compile(r"((train|val)_\d{6}\.bin|meta\.json|tokenizer\.json)(\.tmp)?")


def publish(work, old, folder, meta):
    """Make the finished dataset in work the one in folder, by renames: at every moment one complete
    dataset, old or new, is on disk. meta.json goes in last, so the work folder is complete once it
    has one. The old folder steps aside to `old` and the new one takes its name: between these two
    renames (microseconds) the folder is absent, and a crash there is undone by the next prepare
    (see recover). Other files in the old folder (your raw text, say) are moved into the new one."""
    write_meta(work, meta)
    if os.path.lexists(folder):
        os.replace(folder, old)
    os.replace(work, folder)
    recover(work, old, folder)


def recover(work, old, folder):
    """Finish or undo what a prepare of this name left behind: the old dataset back in place if it was
    set aside and no new one took its name, the user's files back in the folder, the work folder gone."""
    if os.path.isdir(old) and not os.path.lexists(folder):
        os.replace(old, folder)
    if os.path.isdir(old):
        for entry in os.listdir(old):
            if not DATASET_FILE.fullmatch(entry) and not os.path.lexists(os.path.join(folder, entry)):
                os.replace(os.path.join(old, entry), os.path.join(folder, entry))
        shutil.rmtree(old)
    shutil.rmtree(work, ignore_errors=True)


@contextmanager
def writing(data_root, name):
    """Hold data_root/.<name>.lock, so that one prepare at a time writes this name, and give the work
    and old folders and the dataset's folder (the target of a symlink data/<name>: all three are on
    one disk, so renames work). Any failure, Ctrl-C included, puts the disk back as it was (the old
    dataset whole, nothing half-written); an OSError (disk full, read-only folder) becomes one line."""
    out_dir = os.path.join(data_root, name)
    folder = os.path.realpath(out_dir)
    work, old = (os.path.join(os.path.dirname(folder), f".{os.path.basename(folder)}{x}") for x in (".partial", ".old"))
    try:
        os.makedirs(data_root, exist_ok=True)
        lock = hold_lock(os.path.join(data_root, f".{name}.lock"), lambda pid: (
            f"another prepare.py (pid {pid}) is writing {out_dir}: wait for it to finish, or choose another --name"))
    except OSError as e:
        raise UserError(write_error(e, data_root, out_dir)) from None
    try:
        recover(work, old, folder)  # what a killed run left
        os.makedirs(work)
        yield work, old, folder
    except BaseException as e:
        recover(work, old, folder)
        if isinstance(e, OSError):
            raise UserError(write_error(e, data_root, out_dir)) from None
        raise
    finally:
        release_lock(lock)


def write_error(e, data_root, out_dir):
    kept = f"{out_dir} is as it was" if os.path.isfile(os.path.join(out_dir, "meta.json")) else "nothing was written"
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"no space left on the disk of {data_root}: free some space or choose another --data_root ({kept})"
    where = e.filename or data_root
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write in {os.path.dirname(where) or '.'} ({e.strerror}): choose a --data_root "
                f"you can write to ({kept})")
    return f"{where}: {e.strerror or e} ({kept})"


def summary(meta, out_dir):
    c = meta["counts"]
    lines = [f"wrote {out_dir}: {c['train']['tokens']:,} train tokens, {c['val']['tokens']:,} val tokens "
             f"from {meta['documents']:,} documents, tokenizer {meta['tokenizer']['kind']} "
             f"(vocab {meta['tokenizer']['vocab_size']:,}), {meta['seconds']} s"]
    if len(meta["sources"]) > 1:
        lines += [f"  {s.get('dataset') or ', '.join(s['inputs'])}: {s['train_tokens']:,} train tokens tokenized"
                  + (f", weight {w:.3f}" if w is not None else "")
                  for s, w in zip(meta["sources"], (meta["mix"]["weights"] or [None] * len(meta["sources"])))]
    if meta["skipped_empty_documents"]:
        lines.append(f"skipped {meta['skipped_empty_documents']:,} empty documents")
    if meta["invalid_utf8_replaced"]:
        lines.append(f"replaced {meta['invalid_utf8_replaced']:,} invalid UTF-8 sequences with U+FFFD")
    return "\n".join(lines)


def main(argv=None):
    cfg, specs = parse_command_line(sys.argv[1:] if argv is None else argv)
    meta = prepare(cfg, specs)
    print(summary(meta, os.path.join(cfg.data_root, meta["name"])))


if __name__ == "__main__":
    run(main)

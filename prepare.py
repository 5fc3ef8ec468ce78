"""
Prepare a dataset: text -> tokens -> shards + meta.json in data/<name>/.

    python prepare.py                                      # TinyStories from the Hugging Face Hub
    python prepare.py --input ../shared/data/tinyshakespeare.txt --tokenizer char --name shakespeare_char

Every document ends with the end-of-text token. Tokenization runs on all
cores; memory stays bounded by the work in flight, not the corpus. Nothing
is final until meta.json is written, and an existing dataset is only
replaced with --overwrite, after the new one is complete.
"""

import glob
import json
import os
import shutil
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlparse

import numpy as np

import tokenizer as tok
from configurator import UserError, parse_args, run
from shards import shard_paths, token_dtype, write_meta, write_shard, VERSION

HF_DEFAULT = "roneneldan/TinyStories"
PIECE_CHARS = 1 << 20  # long documents are tokenized in pieces of about this many characters


@dataclass
class PrepareConfig:
    """Tokenize text into shards for train.py: TinyStories by default, or local files with --input."""
    input: list[str] = field(default_factory=list)  # local .txt files (one document each), .jsonl files (one document per line), folders or globs; none: TinyStories from the Hub
    name: str = ""  # output folder data/<name>/ (default: tinystories, or the first input's file name)
    tokenizer: str = "gpt2"  # gpt2 (GPT-2 BPE through tiktoken) or char (one id per character seen)
    text_column: str = "text"  # the field that holds the text in .jsonl lines and Hub datasets
    val_fraction: Optional[float] = None  # the last fraction of the tokens kept for validation (default: 0.1, or 0 when the source has a validation split)
    data_root: str = "data"  # where prepared datasets go
    num_proc: int = 0  # tokenizer processes (0: one per core)
    shard_tokens: int = 100_000_000  # tokens per shard file
    overwrite: bool = False  # replace an existing prepared dataset of the same name


# ---------------------------------------------------------------------------
# sources: each split is an iterable of documents (strings); stats count what was skipped or repaired

class Stats:
    def __init__(self):
        self.documents = self.empty = self.bad_utf8 = self.bytes = 0


def decode_utf8(raw):
    """The text, and how many invalid UTF-8 sequences were replaced by U+FFFD."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")


def _read_text(path, stats):
    raw = open(path, "rb").read()
    stats.bytes += len(raw)
    text, bad = decode_utf8(raw)
    stats.bad_utf8 += bad
    return text


def expand_inputs(patterns):
    """Files named by paths, folders (their .txt and .jsonl files, recursively) and globs, in a stable order."""
    files = []
    for p in patterns:
        if os.path.isdir(p):
            found = [os.path.join(r, f) for r, _, fs in os.walk(p) for f in fs if f.endswith((".txt", ".jsonl"))]
            if not found:
                raise UserError(f"folder {p} has no .txt or .jsonl files")
            files += sorted(found)
        elif os.path.isfile(p):
            files.append(p)
        else:
            matches = sorted(m for m in glob.glob(p, recursive=True) if os.path.isfile(m))
            if not matches:
                raise UserError(f"--input {p}: no such file, folder or matching files")
            files += matches
    return list(dict.fromkeys(files))  # a file named twice is read once


def local_documents(files, text_column, stats):
    for path in files:
        text = _read_text(path, stats)
        if not path.endswith(".jsonl"):
            yield text
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or text_column not in record:
                keys = list(record) if isinstance(record, dict) else type(record).__name__
                raise UserError(f"{path}:{n}: no field '{text_column}' (found {keys}); choose one with --text_column")
            yield str(record[text_column])


def check_hub_reachable(name):
    """Fail in seconds, not after datasets' minute of retries, when the Hub cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return  # the user asked for the local cache
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise UserError(
            f"cannot reach the Hugging Face Hub ({url.hostname}: {e.strerror or e}) to download {name}. "
            f"Prepare local files instead (python prepare.py --input FILE_OR_FOLDER ...), or set HF_HUB_OFFLINE=1 "
            f"to use a copy already in your Hugging Face cache") from None


def hub_splits(name, text_column, stats):
    """{'train': documents, 'val': documents or None} from a Hugging Face dataset."""
    check_hub_reachable(name)
    try:
        import datasets
        ds = datasets.load_dataset(name)
    except Exception as e:
        raise UserError(f"could not load {name} from the Hugging Face Hub: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if "train" not in ds:
        raise UserError(f"{name} has no train split (it has {list(ds)})")
    if text_column not in ds["train"].column_names:
        raise UserError(f"{name} has no column '{text_column}' (columns: {ds['train'].column_names}); "
                        f"choose one with --text_column")
    val = next((s for s in ("validation", "valid", "val", "test") if s in ds), None)

    def docs(split):
        for batch in ds[split].iter(batch_size=1000):
            for text in batch[text_column]:
                stats.bytes += len(text)
                yield text or ""
    return {"train": lambda: docs("train"), "val": (lambda: docs(val)) if val else None}, val


# ---------------------------------------------------------------------------
# tokenization: documents -> pieces -> worker processes -> token arrays, in order

def pieces(documents, stats):
    """(text, is_last_piece) tuples. A long document is cut just before a newline that follows a
    non-space character: GPT-2's pre-tokenizer splits there whatever comes next, and its pattern looks
    only forward, so the pieces' tokens are exactly the document's."""
    for doc in documents:
        stats.documents += 1
        if not doc.strip():
            stats.empty += 1
            continue
        start = 0
        while len(doc) - start > PIECE_CHARS:
            cut = doc.find("\n", start + PIECE_CHARS)
            while cut != -1 and doc[cut - 1].isspace():
                cut = doc.find("\n", cut + 1)
            if cut == -1:
                break
            yield doc[start:cut], False
            start = cut
        yield doc[start:], True


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


def _init_worker(meta):
    global _worker_tokenizer
    _worker_tokenizer = tok.from_meta(meta)


def encode_batch(batch):
    """Token array for a batch of pieces, with end-of-text after each document's last piece."""
    t = _worker_tokenizer
    dtype = token_dtype(t.vocab_size)
    out = []
    for ids, (_, last) in zip(t.encode_batch([text for text, _ in batch]), batch):
        out.append(np.asarray(ids, dtype=dtype))
        if last:
            out.append(np.array([t.eot_id], dtype=dtype))
    return np.concatenate(out) if out else np.zeros(0, dtype)


def parallel_map(fn, items, num_proc, initargs):
    """map(fn, items) in num_proc processes, in order, with a bounded number of items in flight."""
    if num_proc <= 1:
        _init_worker(*initargs)
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


def tokenize_to_file(documents, path, meta, num_proc, stats, progress):
    """Append the tokens of every document to a flat file; return the token count."""
    n = 0
    with open(path, "wb") as f:
        for arr in parallel_map(encode_batch, batches(pieces(documents, stats)), num_proc, (meta,)):
            f.write(arr.tobytes())
            n += len(arr)
            progress.update(stats.bytes - progress.n)
    return n


def write_shards(flat, dtype, start, stop, split, out_dir, shard_tokens, vocab_size):
    data = np.memmap(flat, dtype=dtype, mode="r") if stop > start else np.zeros(0, dtype)
    n = 0
    for i, s in enumerate(range(start, stop, shard_tokens)):
        write_shard(os.path.join(out_dir, f"{split}_{i:06d}.bin"), data[s:min(s + shard_tokens, stop)], vocab_size)
        n += 1
    return n


# ---------------------------------------------------------------------------

def prepare(cfg):
    """Prepare a dataset as cfg says; returns its meta.json contents."""
    if cfg.tokenizer not in ("gpt2", "char"):
        raise UserError(f"--tokenizer {cfg.tokenizer!r}: expected gpt2 or char")
    if cfg.val_fraction is not None and not 0 <= cfg.val_fraction < 1:
        raise UserError(f"--val_fraction {cfg.val_fraction}: expected a number in [0, 1)")
    if cfg.shard_tokens < 1:
        raise UserError("--shard_tokens must be at least 1")
    files = expand_inputs(cfg.input) if cfg.input else None
    name = cfg.name or ("tinystories" if files is None else
                        os.path.splitext(os.path.basename(files[0]))[0] + ("_char" if cfg.tokenizer == "char" else ""))
    out_dir = os.path.join(cfg.data_root, name)
    if os.path.isfile(os.path.join(out_dir, "meta.json")) and not cfg.overwrite:
        raise UserError(f"{out_dir} is already prepared; pass --overwrite to replace it, or --name to choose another")

    stats = Stats()
    if files is None:
        splits, val_name = hub_splits(HF_DEFAULT, cfg.text_column, stats)
        source = {"hub_dataset": HF_DEFAULT, "splits": {"train": "train", "val": val_name}, "text_column": cfg.text_column}
        total_bytes = None
    else:
        splits = {"train": lambda: local_documents(files, cfg.text_column, stats), "val": None}
        source = {"inputs": files, "text_column": cfg.text_column}
        total_bytes = sum(os.path.getsize(f) for f in files)
    val_fraction = cfg.val_fraction if cfg.val_fraction is not None else (0.0 if splits["val"] else 0.1)

    if cfg.tokenizer == "char":  # the table is every character seen, so look at all the text first
        tokenizer = tok.CharTokenizer.from_texts(d for s in splits.values() if s for d in s())
        stats = Stats()
    else:
        tokenizer = tok.GPT2Tokenizer()
    meta_tok = tokenizer.meta()
    dtype = token_dtype(tokenizer.vocab_size)
    num_proc = cfg.num_proc or os.cpu_count() or 1

    work = os.path.join(cfg.data_root, f".{name}.partial")  # a killed run leaves only this behind
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    from tqdm import tqdm
    t0 = time.time()
    counts = {}
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenizing ({num_proc} processes)",
              disable=None) as progress:
        flats = {}
        for split, documents in splits.items():
            if documents is not None:
                flats[split] = os.path.join(work, f"{split}.flat")
                counts[split] = tokenize_to_file(documents(), flats[split], meta_tok, num_proc, stats, progress)
    if counts["train"] == 0:
        shutil.rmtree(work)
        raise UserError(f"no text to tokenize: the input has {stats.documents} documents, all empty")

    # the validation split: the source's own, or the last val_fraction of the token stream (as nanoGPT does)
    ranges = {}
    if "val" in flats:
        ranges = {"train": (flats["train"], 0, counts["train"]), "val": (flats["val"], 0, counts["val"])}
    else:
        n = counts["train"]
        n_train = int(n * (1 - val_fraction))
        ranges = {"train": (flats["train"], 0, n_train), "val": (flats["train"], n_train, n)}
    if ranges["train"][2] - ranges["train"][1] == 0:
        shutil.rmtree(work)
        raise UserError(f"--val_fraction {val_fraction} leaves no training tokens")
    shard_counts = {split: write_shards(f, dtype, a, b, split, work, cfg.shard_tokens, tokenizer.vocab_size)
                    for split, (f, a, b) in ranges.items()}
    for f in flats.values():
        os.remove(f)

    meta = {
        "name": name,
        "format_version": VERSION,
        "tokenizer": meta_tok,
        "dtype": np.dtype(dtype).name,
        "source": source,
        "val_fraction": val_fraction,
        "counts": {split: {"tokens": b - a, "shards": shard_counts[split]} for split, (_, a, b) in ranges.items()},
        "documents": stats.documents,
        "skipped_empty_documents": stats.empty,
        "invalid_utf8_replaced": stats.bad_utf8,
        "seconds": round(time.time() - t0, 2),
    }
    publish(work, out_dir, meta)
    return meta


def publish(work, out_dir, meta):
    """Move the finished shards into out_dir and write meta.json last. Other files in out_dir (a user's
    raw text, say) are left alone; old shards go only now that the new ones are complete."""
    os.makedirs(out_dir, exist_ok=True)
    old_meta = os.path.join(out_dir, "meta.json")
    if os.path.exists(old_meta):
        os.remove(old_meta)  # from here until the new meta.json, the folder reads as incomplete
    for split in ("train", "val"):
        for path in shard_paths(out_dir, split):
            os.remove(path)
    for f in sorted(os.listdir(work)):
        os.replace(os.path.join(work, f), os.path.join(out_dir, f))
    write_meta(out_dir, meta)
    os.rmdir(work)


def summary(meta, out_dir):
    c = meta["counts"]
    lines = [f"wrote {out_dir}: {c['train']['tokens']:,} train tokens, {c['val']['tokens']:,} val tokens "
             f"from {meta['documents']:,} documents, tokenizer {meta['tokenizer']['kind']} "
             f"(vocab {meta['tokenizer']['vocab_size']:,}), {meta['seconds']} s"]
    if meta["skipped_empty_documents"]:
        lines.append(f"skipped {meta['skipped_empty_documents']:,} empty documents")
    if meta["invalid_utf8_replaced"]:
        lines.append(f"replaced {meta['invalid_utf8_replaced']:,} invalid UTF-8 sequences with U+FFFD")
    return "\n".join(lines)


def main(argv=None):
    cfg = parse_args(PrepareConfig, argv, prog="prepare.py", usage="[--input PATH ...] [--key=value ...]")
    meta = prepare(cfg)
    print(summary(meta, os.path.join(cfg.data_root, meta["name"])))


if __name__ == "__main__":
    run(main)

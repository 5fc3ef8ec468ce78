"""
Where prepare.py's text comes from: local files, or a Hugging Face dataset, downloaded or streamed.

A Source gives, per split ('train', 'val'), an iterator of pieces (text, ends_document). The val
split is the source's own validation split when it has one; otherwise the last val_fraction of its
text, cut by characters before tokenization (as nanoGPT splits tiny Shakespeare: the same val text
whatever the tokenizer), or, for a stream whose length is unknown, every k-th document.
"""

import glob
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlparse

from configurator import UserError

VAL_SPLIT_NAMES = ("validation", "valid", "val", "test")


@dataclass
class SourceConfig:
    """One source of text; repeat --dataset / --input to mix several."""
    dataset: str = ""  # a Hugging Face dataset, e.g. roneneldan/TinyStories or wikimedia/wikipedia
    input: list[str] = field(default_factory=list)  # local .txt files (one document each), .jsonl files (one per line), folders or globs
    config: str = ""  # the dataset's configuration, e.g. 20231101.en
    split: str = ""  # the split to read, in datasets' syntax, e.g. 'train[:10000]' (default: train, plus its validation split)
    text_column: str = "text"  # the field that holds the text
    weight: Optional[float] = None  # the fraction of the prepared tokens to take from this source (weight all sources or none)


def decode_utf8(raw):
    """The text, and how many invalid UTF-8 sequences were replaced by U+FFFD."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")


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


def check_hub_reachable(name):
    """Fail in seconds, not after datasets' minute of retries, when the Hub cannot be reached."""
    if os.path.isdir(name):
        return  # a dataset folder on this machine (laid out as a Hub repository): datasets reads it offline
    if any(os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return  # the user asked for the local cache
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise UserError(
            f"cannot reach the Hugging Face Hub ({url.hostname}: {e.strerror or e}) to download {name}. "
            f"Prepare local files instead (python prepare.py --input FILE_OR_FOLDER ...), or set HF_HUB_OFFLINE=1 "
            f"to use a copy already in your Hugging Face cache") from None


class Source:

    def __init__(self, spec, streaming=False, val_fraction=None):
        self.spec = spec
        if bool(spec.dataset) == bool(spec.input):
            raise UserError("each source is either --dataset NAME or --input PATHS")
        self.bad_utf8 = {}  # file -> invalid UTF-8 sequences replaced (counted once per file)
        self.streaming = streaming and bool(spec.dataset)
        if spec.input:
            self.files = expand_inputs(spec.input)
            self.label = ", ".join(self.files[:3]) + (f" and {len(self.files) - 3} more" if len(self.files) > 3 else "")
            self._docs = {"train": self._local_documents, "val": None}
        else:
            self.label = spec.dataset + (f" ({spec.config})" if spec.config else "") + (f" [{spec.split}]" if spec.split else "")
            self._docs = self._hub_documents()
        own_val = self._docs["val"] is not None
        self.val_fraction = 0.0 if own_val else (0.1 if val_fraction is None else val_fraction)
        self.val_rule = "own split" if own_val else ("none" if self.val_fraction == 0 else
                                                      "every k-th document" if self.streaming else "text tail")

    def describe(self):
        s = self.spec
        d = {"dataset": s.dataset, "config": s.config or None, "split": s.split or None} if s.dataset else {"inputs": self.files}
        return {**d, "text_column": s.text_column, "weight": s.weight, "streaming": self.streaming,
                "val": self.val_rule, "val_fraction": self.val_fraction}

    # -- documents --------------------------------------------------------------------------

    def _local_documents(self):
        for path in self.files:
            try:
                yield from self._file_documents(path)
            except OSError as e:  # unreadable, or gone since the glob found it
                raise UserError(f"cannot read --input {path}: {e.strerror or e}") from None

    def _file_documents(self, path):
        column = self.spec.text_column
        if not path.endswith(".jsonl"):  # one document, so it is read whole
            with open(path, "rb") as f:
                raw = f.read()
            if b"\0" in raw[:8000]:  # git's test for binary: text has no NUL bytes
                raise UserError(f"--input {path} is not text (it has NUL bytes): give UTF-8 text files "
                                f"(.txt) or .jsonl (UTF-16 text: convert it to UTF-8)")
            text, self.bad_utf8[path] = decode_utf8(raw)
            yield text
            return
        self.bad_utf8[path] = 0
        with open(path, "rb") as f:  # line by line: memory does not grow with the file
            for n, raw in enumerate(f, 1):
                line, bad = decode_utf8(raw[3:] if n == 1 and raw.startswith(b"\xef\xbb\xbf") else raw)  # a BOM
                self.bad_utf8[path] += bad
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                except (RecursionError, ValueError) as e:  # nested past the parser's depth; a 5000-digit number
                    why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:80]
                    raise UserError(f"{path}:{n}: not a JSON record of text ({why})") from None
                if not isinstance(record, dict) or column not in record:
                    keys = list(record)[:10] if isinstance(record, dict) else type(record).__name__
                    raise UserError(f"{path}:{n}: no field '{column}' (found {keys}); choose one with --text_column")
                text = record[column]
                if not isinstance(text, str):  # 5 or ["a"] would be tokenized as its repr: data that is not text
                    shown = json.dumps(text)[:40]
                    raise UserError(f"{path}:{n}: field '{column}' is {shown}, not a string: fix that line, or "
                                    f"choose the field that holds the text with --text_column")
                yield text

    def _hub_documents(self):
        """{'train': documents, 'val': documents or None} from the Hub (or the local datasets cache)."""
        s = self.spec
        check_hub_reachable(s.dataset)
        try:
            import datasets
            args = (s.dataset, s.config) if s.config else (s.dataset,)
            if s.split:
                parts = {"train": datasets.load_dataset(*args, split=s.split, streaming=self.streaming)}
            else:
                parts = datasets.load_dataset(*args, streaming=self.streaming)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"could not load {self.label} from the Hugging Face Hub: "
                            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        if "train" not in parts:
            raise UserError(f"{self.label} has no train split (it has {list(parts)}); choose one with --split")
        val = next((v for v in VAL_SPLIT_NAMES if v in parts), None)
        column = s.text_column

        def docs(split):
            ds = parts[split]
            names = ds.column_names
            if names is not None and column not in names:
                raise UserError(f"{self.label} has no column '{column}' (columns: {names}); choose one with --text_column")
            for batch in ds.iter(batch_size=1000):
                if column not in batch:
                    raise UserError(f"{self.label} has no column '{column}' (columns: {list(batch)}); "
                                    f"choose one with --text_column")
                for text in batch[column]:
                    if text is not None and not isinstance(text, str):
                        raise UserError(f"{self.label}: column '{column}' holds {type(text).__name__} values, not "
                                        f"text; choose the column that holds the text with --text_column")
                    yield text or ""
        self.hub_val_split = val
        return {"train": lambda: docs("train"), "val": (lambda: docs(val)) if val else None}

    # -- splits -----------------------------------------------------------------------------

    def pieces(self, split):
        """(text, ends_document) for one split: a document cut by the train/val boundary is two pieces."""
        if self.val_rule == "own split":
            yield from ((d, True) for d in self._docs[split]())
        elif self.val_rule == "none":
            if split == "train":
                yield from ((d, True) for d in self._docs["train"]())
        elif self.val_rule == "every k-th document":
            k = max(2, round(1 / self.val_fraction))
            for i, d in enumerate(self._docs["train"]()):
                if (i % k == k - 1) == (split == "val"):
                    yield d, True
        else:
            cut = self._tail_cut()
            pos = 0
            for d in self._docs["train"]():
                start, end = pos, pos + len(d)
                pos = end
                if split == "train" and start < cut:
                    yield (d, True) if end <= cut else (d[:cut - start], False)  # the rest goes to val
                elif split == "val" and end > cut:
                    yield (d, True) if start >= cut else (d[cut - start:], True)
                if split == "train" and end >= cut:
                    return

    def _tail_cut(self):
        if not hasattr(self, "_cut"):  # one pass to count the characters
            total = sum(len(d) for d in self._docs["train"]())
            self._cut = int(total * (1 - self.val_fraction))
        return self._cut

    def documents(self, split):
        """Plain texts of a split (a document cut by the boundary counts as two)."""
        return (text for text, _ in self.pieces(split))

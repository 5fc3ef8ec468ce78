"""
Tokenizers: text <-> token ids, described by a small dict that travels from
prepare.py (meta.json) into the checkpoint, so train.py and sample.py never guess.

  gpt2  the GPT-2 BPE through tiktoken (50,257 ids, <|endoftext|> = 50256)
  char  one id per character seen in the corpus, plus an end-of-text id (like nanoGPT's shakespeare_char)
"""

import numpy as np

from configurator import UserError

EOT_TEXT = "<|endoftext|>"


class GPT2Tokenizer:
    """GPT-2 byte-level BPE. tiktoken's r50k_base has the same ranks, pattern and special token as 'gpt2',
    and reads a single file, so it works offline from $TIKTOKEN_CACHE_DIR (see README)."""

    kind = "gpt2"

    def __init__(self):
        import tiktoken
        try:
            self.enc = tiktoken.get_encoding("r50k_base")
        except Exception as e:  # tiktoken downloads the ranks on first use; offline that fails
            raise UserError(
                "cannot load the GPT-2 BPE ranks: tiktoken downloads them once from "
                f"openaipublic.blob.core.windows.net ({type(e).__name__}). Offline, copy a gpt2.tiktoken "
                "ranks file to $TIKTOKEN_CACHE_DIR/0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4 (see README)") from None
        self.vocab_size = self.enc.n_vocab  # 50257
        self.eot_id = self.enc.eot_token    # 50256

    def encode(self, text):
        # ordinary: a literal "<|endoftext|>" in the data is text, not a document boundary
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts):
        return self.enc.encode_ordinary_batch(texts, num_threads=1)

    def decode(self, ids):
        return self.enc.decode(list(ids))

    def token_bytes(self, ids):
        return self.enc.decode_bytes(list(ids))

    def meta(self):
        return {"kind": "gpt2", "vocab_size": self.vocab_size, "eot_id": self.eot_id, "encoding": "r50k_base"}


class CharTokenizer:
    """One id per character, in sorted order; the end-of-text marker gets the id after the last character."""

    kind = "char"

    def __init__(self, chars):
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise UserError("char tokenizer: the character table must hold distinct single characters")
        self.eot_id = len(self.chars)
        self.vocab_size = len(self.chars) + 1
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.itos = self.chars + [EOT_TEXT]
        # a dense table from code point to id makes encode one numpy gather
        self._table = np.full(max((ord(c) for c in self.chars), default=0) + 1, -1, dtype=np.int64)
        for i, c in enumerate(self.chars):
            self._table[ord(c)] = i

    @classmethod
    def from_texts(cls, texts):
        seen = set()
        for t in texts:
            seen.update(t)
        return cls(sorted(seen))

    def encode(self, text):
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        ids = np.where(codes < len(self._table), self._table[np.minimum(codes, len(self._table) - 1)], -1)
        if (ids < 0).any():
            bad = text[int(np.argmax(ids < 0))]
            raise UserError(f"character {bad!r} is not in this char tokenizer's vocabulary "
                            f"({len(self.chars)} characters seen in the training data)")
        return ids.tolist()

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return "".join(self.itos[i] for i in ids)

    def token_bytes(self, ids):
        return self.decode(ids).encode("utf-8")

    def meta(self):
        return {"kind": "char", "vocab_size": self.vocab_size, "eot_id": self.eot_id, "chars": "".join(self.chars)}


def from_meta(meta):
    """Rebuild a tokenizer from its description in meta.json or a checkpoint."""
    kind = meta.get("kind")
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        return CharTokenizer(meta["chars"])
    raise UserError(f"unknown tokenizer kind {kind!r} (expected 'gpt2' or 'char')")


def same_tokenizer(a, b):
    """Whether two tokenizer descriptions map text to the same ids."""
    keys = ("kind", "vocab_size", "eot_id", "chars", "encoding")
    return all(a.get(k) == b.get(k) for k in keys)

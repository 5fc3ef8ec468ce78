"""
Tokenizers: text <-> token ids, described by a small dict that travels from
prepare.py (meta.json) into the checkpoint, so train.py and sample.py never guess.

  gpt2  the GPT-2 BPE through tiktoken (50,257 ids, <|endoftext|> = 50256)
  char  one id per character seen in the corpus, plus an end-of-text id (like nanoGPT's shakespeare_char)
  bpe   a byte-level BPE trained on the corpus by Hugging Face `tokenizers` (pip install tokenizers),
        stored whole in meta.json and in every checkpoint
"""

import base64
import functools
import hashlib
import os

import numpy as np

from configurator import UserError

EOT_TEXT = "<|endoftext|>"


# The GPT-2 ranks ship in assets/ (MIT, see assets/README.md): tiktoken would download them on first use,
# which fails, or hangs, on a machine without internet (most clusters).
GPT2_RANKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "gpt2.tiktoken")
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # tiktoken's r50k_base
# tiktoken_ext/openai_public.py's r50k_pat_str: GPT-2's split into words, in a faster equivalent form
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def read_ranks(path, sha256=GPT2_RANKS_SHA256):
    """{token bytes: rank} from a .tiktoken file (one 'base64-token rank' per line), or (None, why not).
    Parsed here rather than by tiktoken.load.load_tiktoken_bpe, which also copies a local file into its cache."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None, f"{path} is missing"
    if hashlib.sha256(data).hexdigest() != sha256:
        return None, f"{path} is not the GPT-2 ranks file (its sha256 differs)"
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}, None


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
    """tiktoken's r50k_base (the same ranks, pattern and special token as 'gpt2'): from the shipped ranks
    file, with no network; without it, from tiktoken's own download and cache."""
    import tiktoken
    ranks, why_not = read_ranks(GPT2_RANKS)
    if ranks is not None:
        return tiktoken.Encoding("r50k_base", pat_str=R50K_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={EOT_TEXT: len(ranks)}, explicit_n_vocab=len(ranks) + 1)
    try:
        return tiktoken.get_encoding("r50k_base")
    except Exception as e:  # offline, the download fails
        raise UserError(
            f"cannot load the GPT-2 BPE ranks: {why_not}, and tiktoken could not download them "
            f"({type(e).__name__}); restore the file (git checkout assets/gpt2.tiktoken) or copy "
            f"https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken there") from None


class GPT2Tokenizer:
    """GPT-2 byte-level BPE, tiktoken's r50k_base."""

    kind = "gpt2"

    def __init__(self):
        self.enc = gpt2_encoding()
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


def bytes_to_unicode():
    """GPT-2's reversible map from bytes to printable characters: the alphabet of byte-level BPE
    vocabularies (vocab.json, tokenizers' ByteLevel)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(shifted)}}


class BPETokenizer:
    """A byte-level BPE trained on the data (GPT-2's scheme, a vocabulary of your size). Its end-of-text
    id is one past the trained vocabulary, so a literal "<|endoftext|>" in the text stays text."""

    kind = "bpe"

    def __init__(self, json_str):
        Tokenizer = _tokenizers().Tokenizer
        self.tok = Tokenizer.from_str(json_str)
        self.json = json_str
        self.eot_id = self.tok.get_vocab_size()
        self.vocab_size = self.eot_id + 1
        decoder = {c: b for b, c in bytes_to_unicode().items()}
        self._bytes = [bytes(decoder[c] for c in self.tok.id_to_token(i)) for i in range(self.eot_id)]
        self._bytes.append(EOT_TEXT.encode())

    @classmethod
    def train(cls, texts, vocab_size):
        """Train on an iterable of texts; the vocabulary may come out smaller on a small corpus."""
        tk = _tokenizers()
        if vocab_size < 258:
            raise UserError(f"--vocab_size {vocab_size}: a byte-level BPE needs at least 258 (256 bytes + 1 merge + end-of-text)")
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split into words
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size - 1, show_progress=False,  # -1: room for end-of-text
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(tok.to_str())

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids):
        return self.token_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, ids):
        return b"".join(self._bytes[i] for i in ids)

    def meta(self):
        return {"kind": "bpe", "vocab_size": self.vocab_size, "eot_id": self.eot_id, "json": self.json}


def _tokenizers():
    try:
        import tokenizers
        return tokenizers
    except ImportError:
        raise UserError("the bpe tokenizer needs Hugging Face tokenizers: pip install tokenizers") from None


def from_meta(meta):
    """Rebuild a tokenizer from its description in meta.json or a checkpoint."""
    import validate
    if not isinstance(meta, dict) or meta.get("kind") not in ("gpt2", "char", "bpe"):
        kind = meta.get("kind") if isinstance(meta, dict) else meta
        raise UserError(f"unknown tokenizer kind {kind!r} (expected gpt2, char or bpe)")
    validate.tokenizer_meta(meta, "the tokenizer description", "prepare the data (or train the model) again")
    kind = meta["kind"]
    if kind == "gpt2":
        t = GPT2Tokenizer()
    elif kind == "char":
        t = CharTokenizer(meta["chars"])
    else:
        try:
            t = BPETokenizer(meta["json"])
        except UserError:
            raise
        except Exception as e:  # tokenizers' own parse error: a damaged or foreign json
            raise UserError(f"the bpe tokenizer's json cannot be read ({type(e).__name__}: {str(e)[:100]}): "
                            f"prepare the data again") from None
    if (t.vocab_size, t.eot_id) != (meta["vocab_size"], meta["eot_id"]):
        raise UserError(f"the {kind} tokenizer description says vocab_size {meta['vocab_size']} and eot_id "
                        f"{meta['eot_id']}, but the tokenizer it describes has {t.vocab_size} and {t.eot_id}: "
                        f"prepare the data again")
    return t


def same_tokenizer(a, b):
    """Whether two tokenizer descriptions map text to the same ids."""
    keys = ("kind", "vocab_size", "eot_id", "chars", "encoding", "json")
    return all(a.get(k) == b.get(k) for k in keys)

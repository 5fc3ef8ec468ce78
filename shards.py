"""
Token shards and meta.json: the on-disk format between prepare.py and train.py.

A shard `{split}_{NNNNNN}.bin` is a 1024-byte header of little-endian int32s,
    [0] MAGIC   [1] VERSION   [2] bytes per token (2: uint16, 4: uint32)   [3] token count
    [4] the largest token id in the shard (-1 if empty), so a vocabulary check reads no tokens
followed by the tokens. The reader checks all four against the file, so a
truncated or foreign file is refused with a clear message; check_tokens also
reads a sample of the tokens. meta.json is written last: a directory with
meta.json is complete, and read_meta refuses a damaged one in one line.
"""

import glob
import json
import os

import numpy as np

import safeio
import validate
from configurator import UserError

MAGIC = 20261121
VERSION = 1
HEADER_INTS = 256  # 1024 bytes
HEADER_BYTES = HEADER_INTS * 4
MAX_SHARD_TOKENS = 2**31 - 1


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class ShardWriter:
    """Appends a split's tokens to shards of at most shard_tokens tokens, each written atomically
    (to name.tmp, then renamed once complete), so memory stays bounded by what one append holds."""

    def __init__(self, out_dir, split, vocab_size, shard_tokens=MAX_SHARD_TOKENS):
        self.out_dir, self.split, self.vocab_size = out_dir, split, vocab_size
        self.shard_tokens = min(shard_tokens, MAX_SHARD_TOKENS)
        self.dtype = np.dtype(token_dtype(vocab_size)).newbyteorder("<")
        self.f, self.shards, self.tokens = None, 0, 0

    def write(self, tokens):
        tokens = np.asarray(tokens)
        check_range(tokens, self.vocab_size)
        while len(tokens):
            if self.f is None:
                self._open()
            take = tokens[:self.shard_tokens - self.count]
            self.f.write(take.astype(self.dtype, copy=False).tobytes())
            self.count += len(take)
            self.top = max(self.top, int(take.max()))
            tokens = tokens[len(take):]
            if self.count == self.shard_tokens:
                self._finish()

    def _open(self):
        self.path = os.path.join(self.out_dir, f"{self.split}_{self.shards:06d}.bin")
        self.f = safeio.create_new(self.path + ".tmp")
        self.f.write(bytes(HEADER_BYTES))  # the header comes last, when the count is known
        self.count, self.top = 0, -1

    def _finish(self):
        self.f.seek(0)
        self.f.write(_header(self.dtype.itemsize, self.count, self.top))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.path + ".tmp", self.path)
        safeio.fsync_dir(self.out_dir)
        self.f, self.shards, self.tokens = None, self.shards + 1, self.tokens + self.count

    def close(self):
        """Finish the last shard; a split always gets at least one (possibly empty) shard."""
        if self.f is None and self.shards == 0:
            self._open()
        if self.f is not None:
            self._finish()
        return self.shards, self.tokens


def _header(itemsize, count, top):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:5] = [MAGIC, VERSION, itemsize, count, top]
    return header.tobytes()


def write_shard(path, tokens, vocab_size):
    """One shard holding these tokens, written atomically."""
    dtype = np.dtype(token_dtype(vocab_size)).newbyteorder("<")
    tokens = np.asarray(tokens)
    check_range(tokens, vocab_size)
    if len(tokens) > MAX_SHARD_TOKENS:
        raise ValueError(f"a shard of {len(tokens)} tokens is larger than the format allows")
    top = int(tokens.max()) if len(tokens) else -1

    def write(f):
        f.write(_header(dtype.itemsize, len(tokens), top))
        f.write(tokens.astype(dtype, copy=False).tobytes())
    safeio.atomic_write(path, write)


def check_range(tokens, vocab_size):
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token id out of range for vocab_size {vocab_size}")  # never write what cannot be read


def read_header(path):
    """(bytes per token, token count, largest token id) after checking the header against the file."""
    try:
        size = os.path.getsize(path)
        header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    except OSError as e:
        raise UserError(f"cannot read shard {path}: {e.strerror}") from None
    if len(header) < HEADER_INTS or header[0] != MAGIC:
        raise UserError(f"{path} is not a token shard (bad header); re-run prepare.py")
    if header[1] != VERSION:
        raise UserError(f"{path} has shard format version {header[1]}, this code reads {VERSION}; re-run prepare.py")
    itemsize, count = int(header[2]), int(header[3])
    if itemsize not in (2, 4) or size != HEADER_BYTES + itemsize * count:
        raise UserError(f"{path} is truncated or corrupt: header says {count} tokens, file has "
                        f"{(size - HEADER_BYTES) / max(itemsize, 1):.0f}; re-run prepare.py")
    return itemsize, count, int(header[4])


def open_shard(path):
    """Memory-map a shard's tokens after checking its header against the file."""
    itemsize, count, _ = read_header(path)
    dtype = np.dtype("<u2" if itemsize == 2 else "<u4")
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


SCAN_CHUNK = 1 << 26  # tokens per step of a full scan: 128 MiB of uint16, bounded memory


def check_tokens(path, vocab_size, sample=4096, whose="the"):
    """Check a shard's token ids against its header and a vocabulary of vocab_size ids: the header's
    largest id, then either every token (sample=None: a vectorised max over the memory-mapped file in
    chunks, several GB/s, docs/benchmarks.md) or `sample` tokens read in 16 blocks spread over the
    file. whose: whose vocabulary the error names ("the model's")."""
    _, count, top = read_header(path)
    if top >= vocab_size:
        raise UserError(f"{path} holds token id {top}, but {whose} vocabulary has {vocab_size} ids: the data and "
                        f"the model use different tokenizers; re-run prepare.py or choose the matching dataset")
    tokens = open_shard(path)
    if sample is None or count <= sample:
        blocks = [(a, min(a + SCAN_CHUNK, count)) for a in range(0, count, SCAN_CHUNK)]
    else:
        size = max(1, sample // 16)
        blocks = [(int(s), int(s) + size) for s in np.linspace(0, count - size, 16)]
    for a, b in blocks:
        check_window(tokens[a:b], top, path, a)
    return count


def check_window(chunk, top, path, offset=0):
    """Refuse token ids above `top` (the shard header's largest id, itself checked against the
    vocabulary before training): what a reader runs on every window it hands to a model, so that no
    out-of-range id can reach the embedding, whatever happened to the file after prepare.py wrote it."""
    if len(chunk) and int(chunk.max()) > top:
        i = offset + int(np.argmax(np.asarray(chunk) > top))
        raise UserError(f"{path} is corrupt: token {i:,} is id {int(chunk[i - offset])}, above the largest id its "
                        f"header records ({top}), so its data is damaged; re-run prepare.py")


def shard_paths(data_dir, split):
    return sorted(glob.glob(os.path.join(data_dir, f"{split}_[0-9][0-9][0-9][0-9][0-9][0-9].bin")))


def write_meta(data_dir, meta):
    safeio.write_text(os.path.join(data_dir, "meta.json"), json.dumps(meta, indent=2, ensure_ascii=False))


def read_meta(data_dir):
    """The dataset's meta.json, checked: a damaged or foreign one is a one-line error, not a traceback."""
    path = os.path.join(data_dir, "meta.json")
    name = os.path.basename(os.path.normpath(data_dir))
    if not os.path.isdir(data_dir):
        how = "python prepare.py" if name == "tinystories" else f"python prepare.py --input YOUR_FILES --name {name}"
        raise UserError(f"dataset folder {data_dir} not found: prepare it first ({how})")
    if not os.path.isfile(path):
        raise UserError(f"{data_dir} has no meta.json, so it is not a complete prepared dataset: "
                        f"run prepare.py (again) to create it")
    again = f"prepare the dataset again (prepare.py ... --name {name} --overwrite)"
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError: a truncated or overwritten file
        raise UserError(f"{path} is damaged ({str(e).splitlines()[0][:100]}): {again}") from None
    problem = meta_problem(meta)
    if problem:
        raise UserError(f"{path} {problem}: {again}")
    validate.tokenizer_meta(meta["tokenizer"], f"{path} tokenizer", again, known_only=False)
    for split in ("train", "val"):
        validate.Fields(meta["counts"][split], f"{path} counts.{split}", again).int("tokens", 0, 2**62)
    return meta


def fingerprint(data_dir):
    """The identity of a prepared dataset: a hash of its meta.json's bytes and of its shards' names and
    sizes (no token is read). A checkpoint records it, so a resume on data that changed is noticed."""
    import hashlib
    h = hashlib.sha256()
    with open(os.path.join(data_dir, "meta.json"), "rb") as f:
        h.update(f.read())
    for split in ("train", "val"):
        for p in shard_paths(data_dir, split):
            h.update(f"{os.path.basename(p)}:{os.path.getsize(p)};".encode())
    return h.hexdigest()[:16]


def meta_problem(meta):
    """What is wrong with a parsed meta.json, or None: the keys train.py, eval.py and sample.py rely on."""
    if not isinstance(meta, dict):
        return f"holds a JSON {type(meta).__name__}, not an object"
    if meta.get("format_version", VERSION) != VERSION:  # tools may write a minimal meta.json without one
        return f"has format_version {meta['format_version']!r}, this code reads {VERSION}"
    t = meta.get("tokenizer")
    need = {"gpt2": "encoding", "char": "chars", "bpe": "json"}  # other kinds (bench.py's random ids) train
    if not isinstance(t, dict) or not isinstance(t.get("kind"), str) or need.get(t["kind"], "kind") not in t:
        return "has no valid 'tokenizer' entry (a kind, and a gpt2's encoding, a char's chars or a bpe's json)"
    if not (_is_int(t.get("vocab_size")) and _is_int(t.get("eot_id")) and 0 <= t["eot_id"] < t["vocab_size"]):
        return "has a 'tokenizer' entry without a valid vocab_size and eot_id"
    counts = meta.get("counts")
    if not (isinstance(counts, dict) and all(isinstance(counts.get(s), dict) and _is_int(counts[s].get("tokens"))
                                             for s in ("train", "val"))):
        return "has no valid 'counts' entry (train and val token counts)"
    return None


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def hold_lock(path, busy):
    """An exclusive flock on the file at path, which then holds our process id (and host), until the
    returned file is closed or the process dies, even by kill -9. When another process holds it, a
    UserError with busy(what the file says of its holder). None where there is no flock (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    import socket
    while True:
        f = safeio.open_lock(path)  # never through a symlink: a planted one would have us truncate its target
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise UserError(busy(holder)) from None
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break  # still the file at path: not one its last holder removed (release_lock)
        except FileNotFoundError:
            pass
        f.close()
    f.truncate(0)
    f.seek(0)
    f.write(f"{os.getpid()} on {socket.gethostname()}")
    f.flush()
    return f


def release_lock(f):
    """Remove a lock file from hold_lock, then let go of it."""
    if f is not None:
        os.remove(f.name)  # while still holding it, so no one locks a removed file (see hold_lock)
        f.close()

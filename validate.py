"""
One check for everything read from disk: typed field checkers, and the checks built from them for
each kind of file this project reads (a checkpoint's dict, its model arguments, tokenizer and
tensors; a Hugging Face config.json and nanogpt.json; meta.json; a JSON line).

Every check raises configurator.UserError with one line that names the file, the field, what was
wrong with it and what to do, before anything large is built from the values. Readers call these
checks instead of trusting a value from a file: a file is data, possibly damaged, possibly hostile.
"""

import dataclasses
import json
import math

from configurator import UserError

MISSING = object()
MAX_DIM = 2**16  # n_embd, n_head: far beyond any real model (GPT-3: 12,288 wide, 96 heads)
MAX_LAYERS = 2**12  # GPT-3 has 96; building even the meta-device shapes of a million layers takes minutes
MAX_VOCAB = 2**31 - 1  # uint32 shard tokens
MAX_CONTEXT = 2**24
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")  # what a model's weights may be stored as


def _show(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Fields:
    """Typed access to the fields of one dict read from a file: `where` names the file (and the entry
    in it), `fix` says what to do. Each getter returns the value, checked, or raises one UserError."""

    def __init__(self, obj, where, fix):
        self.where, self.fix = where, fix
        if not isinstance(obj, dict):
            self.fail(None, f"is a JSON {type(obj).__name__}, not an object")
        self.obj = obj

    def fail(self, key, problem, value=MISSING):
        """One line: 'FILE: key=VALUE is PROBLEM: FIX' (or 'FILE field 'key' PROBLEM' with no value)."""
        if key is None:
            raise UserError(f"{self.where} {problem}: {self.fix}")
        if value is MISSING:
            raise UserError(f"{self.where}: '{key}' {problem}: {self.fix}")
        raise UserError(f"{self.where}: {key}={_show(value)} {problem}: {self.fix}")

    def _get(self, key, default):
        if key not in self.obj:
            if default is MISSING:
                self.fail(key, "is missing")
            return default, False
        return self.obj[key], True

    def int(self, key, low=None, high=None, default=MISSING):
        value, present = self._get(key, default)
        if not present:
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(key, "is not an integer", value)
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(key, f"is outside [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]",
                      value)
        return value

    def number(self, key, low=None, high=None, default=MISSING, low_open=False, high_open=False, finite=True):
        value, present = self._get(key, default)
        if not present:
            return value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self.fail(key, "is not a number", value)
        value = float(value)
        if finite and not math.isfinite(value):
            self.fail(key, "is not a finite number", value)
        if math.isnan(value) or (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and (value > high or (high_open and value == high))):
            self.fail(key, f"is outside {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}", value)
        return value

    def bool(self, key, default=MISSING):
        value, present = self._get(key, default)
        if present and not isinstance(value, bool):
            self.fail(key, "is not true or false", value)
        return value

    def str(self, key, choices=None, default=MISSING, nonempty=False):
        value, present = self._get(key, default)
        if not present:
            return value
        if not isinstance(value, str):
            self.fail(key, "is not a string", value)
        if choices is not None and value not in choices:
            self.fail(key, f"is not one of {', '.join(map(repr, choices))}", value)
        if nonempty and not value.strip():
            self.fail(key, "is empty", value)
        return value

    def dict(self, key, default=MISSING):
        value, present = self._get(key, default)
        if present and not isinstance(value, dict):
            self.fail(key, "is not an object", value)
        return value

    def list(self, key, item=None, length=None, default=MISSING):
        """A list; item(value) -> problem or None checks each element."""
        value, present = self._get(key, default)
        if not present:
            return value
        if not isinstance(value, list):
            self.fail(key, "is not a list", value)
        if length is not None and len(value) != length:
            self.fail(key, f"has {len(value)} entries, not {length}", value)
        for i, v in enumerate(value):
            problem = item(v) if item else None
            if problem:
                self.fail(key, f"has entry {i} = {_show(v)}, which {problem}", value)
        return value

    def only(self, allowed):
        """Refuse keys outside `allowed` (a file from another version, or a typo)."""
        extra = sorted(k for k in self.obj if k not in allowed)
        if extra:
            self.fail(None, f"has unknown key '{extra[0]}' (known: {', '.join(sorted(allowed))})")


# ---------------------------------------------------------------------------------------------
# JSON text: one parse, with its failures (bad UTF-8, bad JSON, nesting past the recursion limit) as one line

def parse_json(raw, where, fix):
    """The value of a JSON document given as bytes or str; UserError naming `where` if it is not one."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError as e:
        raise UserError(f"{where} is not UTF-8 (byte {e.start}): {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not JSON ({e.msg}, column {e.colno}): {fix}") from None
    except RecursionError:
        raise UserError(f"{where} is nested too deeply to be a JSON record of this kind: {fix}") from None
    except ValueError as e:  # e.g. an integer with more digits than Python parses
        raise UserError(f"{where} is not JSON ({str(e)[:80]}): {fix}") from None


def read_json(path, fix, limit=1 << 30):
    """A JSON file's value, checked as parse_json does; OSErrors as one line."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > limit:
        raise UserError(f"{path} is larger than {limit >> 20} MiB, too large for a file of this kind: {fix}")
    return parse_json(raw, path, fix)


# ---------------------------------------------------------------------------------------------
# tokenizer descriptions (meta.json, checkpoints, nanogpt.json)

GPT2_VOCAB, GPT2_EOT = 50257, 50256


def tokenizer_meta(t, where, fix, known_only=True):
    """A tokenizer description, checked for types and for agreement between its fields: a char table
    of n characters has vocab_size n + 1 and eot_id n; GPT-2's has 50,257 ids. known_only=False lets
    through other kinds with a valid vocab_size and eot_id (bench.py's random-id datasets)."""
    f = Fields(t, where, fix)
    kind = f.str("kind", choices=("gpt2", "char", "bpe") if known_only else None)
    vocab = f.int("vocab_size", 1, MAX_VOCAB)
    eot = f.int("eot_id", 0, vocab - 1)
    if kind == "gpt2":
        if vocab != GPT2_VOCAB or eot != GPT2_EOT:
            f.fail("vocab_size", f"with eot_id {eot} does not match GPT-2's tokenizer ({GPT2_VOCAB} ids, "
                                 f"end-of-text {GPT2_EOT})", vocab)
        f.str("encoding", choices=("r50k_base", "gpt2"), default="r50k_base")
    elif kind == "char":
        chars = f.str("chars")
        if len(set(chars)) != len(chars):
            f.fail("chars", "repeats a character (a char table holds each character once)", chars)
        if vocab != len(chars) + 1 or eot != len(chars):
            f.fail("vocab_size", f"with eot_id {eot} does not match the char table of {len(chars)} characters "
                                 f"(vocab_size {len(chars) + 1}, eot_id {len(chars)})", vocab)
    elif kind == "bpe":
        f.str("json", nonempty=True)
    return t


# ---------------------------------------------------------------------------------------------
# model arguments (checkpoints, Hugging Face imports)

def model_args(args, where, fix):
    """GPTConfig arguments from a file: every key one GPTConfig has, of its type and in range, and the
    combination buildable (model.check_config). Returns them as a dict."""
    from model import GPTConfig, check_config
    f = Fields(args, where + " model_args", fix)
    f.only({x.name for x in dataclasses.fields(GPTConfig)})
    out = {}
    for key, low, high in (("n_layer", 1, MAX_LAYERS), ("n_head", 1, MAX_DIM), ("n_embd", 1, MAX_DIM),
                           ("block_size", 1, MAX_CONTEXT), ("vocab_size", 1, MAX_VOCAB), ("pad_vocab_to", 1, 2**16)):
        if key in args:
            out[key] = f.int(key, low, high)
    for key in ("bias", "rope", "qk_norm", "tie_embeddings", "zero_init"):
        if key in args:
            out[key] = f.bool(key)
    if "dropout" in args:
        out["dropout"] = f.number("dropout", 0.0, 1.0, high_open=True)
    if "logit_softcap" in args:
        out["logit_softcap"] = f.number("logit_softcap", 0.0, 1e6)
    for key, choices in (("gelu_approx", ("none", "tanh")), ("norm", ("layernorm", "rmsnorm")),
                         ("mlp", ("gelu", "relu2", "swiglu"))):
        if key in args:
            out[key] = f.str(key, choices=choices)
    try:
        config = GPTConfig(**out)
        check_config(config)
    except ValueError as e:
        f.fail(None, f"describe a model that cannot be built ({e})")
    if config.n_embd * config.n_layer * config.n_embd > 2**44:  # > 10^13 parameters: no file of ours holds that
        f.fail(None, f"claim {config.n_layer} layers of width {config.n_embd}, beyond any model this code trains")
    return out


# ---------------------------------------------------------------------------------------------
# tensors: dtype, shape against the model, finite values, and their bytes against the file

def tensors(state, expected, where, fix, finite=True):
    """Check a state dict against `expected` (name -> a tensor of the right shape, e.g. on the meta
    device): the same names and shapes, floating-point weights of a dtype in WEIGHT_DTYPES (an int8,
    int64 or complex tensor would be cast silently), and, with finite, no NaN or inf."""
    import torch
    from checkpoint import state_dict_mismatch
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UserError(f"{where}: its weights are not a dict of named tensors: {fix}")
    problem = state_dict_mismatch(expected, state)
    if problem:
        raise UserError(f"{where}: the weights do not match the model config saved with them: {problem}")
    for name, t in state.items():
        dtype = str(t.dtype).replace("torch.", "")
        if dtype not in WEIGHT_DTYPES:
            raise UserError(f"{where}: tensor {name} is {dtype}, but weights must be one of "
                            f"{', '.join(WEIGHT_DTYPES)} (a cast would change them silently): {fix}")
        if finite and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(f"{where}: tensor {name} holds {bad:,} NaN or infinite values, so the model cannot "
                            f"give a meaningful output: use an earlier checkpoint (the run diverged, or the file "
                            f"was damaged)")


def claimed_layers(args, state, where, fix, prefix="transformer.h.", config="the model config saved with them"):
    """The layer count and width model_args claim against the tensors a file holds, before any model (even
    on the meta device, whose cost grows with the layers) is built from the claim."""
    import re
    if not isinstance(state, dict):
        raise UserError(f"{where}: its weights are not a dict of named tensors: {fix}")
    layers = {int(m.group(1)) for k in state if isinstance(k, str) and (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    n_layer = args.get("n_layer", 12)
    if layers != set(range(n_layer)):
        raise UserError(f"{where}: the weights do not match {config}: n_layer={n_layer}, but the file holds "
                        f"{len(layers)} layers")
    wte = state.get("transformer.wte.weight")
    n_embd = args.get("n_embd", 768)
    if hasattr(wte, "shape") and (len(wte.shape) != 2 or wte.shape[1] != n_embd):
        raise UserError(f"{where}: the weights do not match {config}: transformer.wte.weight has shape "
                        f"{tuple(wte.shape)} where the config implies n_embd={n_embd}")


def storage_bytes(obj, path):
    """Refuse tensors that claim more values than their storage holds (a crafted stride-0 trick), and
    storages adding up to more bytes than the file at `path`: the values a checkpoint claims must be
    in it, before its checksum is computed (which would materialize them)."""
    import os
    seen, total = set(), 0
    for name, t in _walk_tensors(obj):
        storage = t.untyped_storage()
        if t.numel() * t.element_size() > storage.nbytes():  # overlapping (stride 0): values it does not have
            raise UserError(f"{path}: tensor {name} claims {t.numel():,} values in a storage of {storage.nbytes():,} "
                            f"bytes: the file is crafted or damaged, refusing it")
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    size = os.path.getsize(path) if os.path.isfile(path) else None
    if size is not None and total > size:
        raise UserError(f"{path}: its tensors claim {total:,} bytes but the file has {size:,}: crafted or damaged, "
                        f"refusing it")


def _walk_tensors(obj, prefix=""):
    import torch
    if isinstance(obj, torch.Tensor):
        yield prefix or "tensor", obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk_tensors(v, f"{prefix}[{i}]")


# ---------------------------------------------------------------------------------------------
# a checkpoint's dict, the parts every reader needs (train.py checks its config against TrainConfig)

def checkpoint_dict(obj, path):
    fix = "use another checkpoint (best.pt, ckpt.pt or ckpt_NNNNNNN.pt), or train again"
    f = Fields(obj, path, fix)
    f.dict("model")
    model_args(f.dict("model_args"), path, fix)
    tokenizer_meta(f.dict("tokenizer"), f"{path} tokenizer", fix, known_only=False)
    f.int("iter_num", 0, 2**62, default=0)
    if "best_val_loss" in obj:
        f.number("best_val_loss", finite=False)
    if "config" in obj and obj["config"] is not None:
        f.dict("config")
    return obj

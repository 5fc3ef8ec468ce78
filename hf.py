"""
Hugging Face interop: our GPT as a transformers GPT2LMHeadModel directory, and back.

The two are the same network, so converting is renaming plus four details:
  - HF's GPT-2 uses Conv1D layers, whose weights are the transpose of nn.Linear's;
  - HF's GPT-2 always has biases: a model trained with bias=False exports zeros, which is exact;
  - the GELU: ours is exact by default (HF's "gelu"); OpenAI's GPT-2 weights were trained with the
    tanh approximation (HF's "gelu_new"), which imports as GPTConfig.gelu_approx="tanh";
  - vocabulary padding (GPTConfig.pad_vocab_to): its zero rows are cut off on export and put back
    on import (nanogpt.json records the padding).

An exported directory holds config.json and model.safetensors (what from_pretrained reads), the
GPT-2 tokenizer's vocab.json and merges.txt (rebuilt offline from tiktoken's ranks), nanogpt.json
(our tokenizer description and bias setting, so that an import restores the model exactly) and a
README.md that says how to encode text for the model.
"""

import functools
import json
import os
import shutil
from dataclasses import asdict, replace

import torch

import safeio
import validate
from checkpoint import state_dict_mismatch
from configurator import UserError, os_error
from shards import hold_lock, release_lock
from model import GPT, GPTConfig, padded_vocab_size
from tokenizer import EOT_TEXT, GPT2Tokenizer, bytes_to_unicode, same_tokenizer

VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight")  # one row per token id
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GELU = {"none": "gelu", "tanh": "gelu_new"}  # ours -> HF's activation_function
HF_GELU = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}  # and back
SIDECAR = "nanogpt.json"
EXPORT_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", SIDECAR, "README.md")
# GPT2Config's defaults, for keys a config.json leaves out
HF_DEFAULTS = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                   activation_function="gelu_new", layer_norm_epsilon=1e-5, scale_attn_weights=True,
                   scale_attn_by_inverse_layer_idx=False, tie_word_embeddings=True, add_cross_attention=False)


def is_hf_dir(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def _shapes(model_args):
    """Our state dict for these model args, as meta tensors: names and shapes, no memory."""
    with torch.device("meta"):
        return GPT(GPTConfig(**model_args)).state_dict()


def fit_rows(w, rows):
    """A token table or head cut, or padded with zero rows, to `rows` rows (vocabulary padding)."""
    if len(w) >= rows:
        return w[:rows]
    return torch.cat([w, w.new_zeros(rows - len(w), *w.shape[1:])])


def to_hf(state, model_args):
    """Our state dict -> GPT2LMHeadModel's (a tied lm_head is left out: HF ties it to wte on load)."""
    out = {}
    for name, like in _shapes({**model_args, "bias": True, "pad_vocab_to": 1}).items():
        if name == "lm_head.weight" and model_args.get("tie_embeddings", True):
            continue
        w = state[name] if name in state else torch.zeros(like.shape)  # a model without biases: zero biases
        if name in VOCAB_ROWS:
            w = fit_rows(w, like.shape[0])  # the real vocabulary only
        out[name] = (w.t() if name.endswith(CONV1D) else w).contiguous()
    return out


def from_hf(hf_state, model_args):
    """GPT2LMHeadModel's state dict (as normalized by read_hf_weights) -> ours."""
    out = {}
    for name, like in _shapes(model_args).items():
        tied = name == "lm_head.weight" and model_args.get("tie_embeddings", True)
        w = hf_state["transformer.wte.weight" if tied else name]
        if name in VOCAB_ROWS:
            w = fit_rows(w, like.shape[0])  # padded again, if model_args say so
        out[name] = w.t().contiguous() if name.endswith(CONV1D) else w
    return out


# ---------------------------------------------------------------------------------------------
# import: a local Hugging Face GPT-2 directory -> model args, weights, tokenizer

def model_args_from_hf(config, path):
    """GPTConfig arguments for a GPT-2 config.json, or a UserError naming what we cannot represent:
    every field this code reads is checked for type and range first (validate.Fields)."""
    where = f"{path}/config.json"
    fix = "fix config.json, or export the model again"
    c = validate.Fields(config, where, fix)
    if c.str("model_type", default=None) != "gpt2":
        raise UserError(f"{where} describes a {config.get('model_type')!r} model: only GPT-2 (model_type "
                        f"'gpt2') can be imported")
    d = HF_DEFAULTS
    n_layer, n_head = c.int("n_layer", 1, validate.MAX_LAYERS, d["n_layer"]), c.int("n_head", 1, validate.MAX_DIM, d["n_head"])
    n_embd = c.int("n_embd", 1, validate.MAX_DIM, d["n_embd"])
    positions = c.int("n_positions", 1, validate.MAX_CONTEXT, d["n_positions"])
    vocab = c.int("vocab_size", 1, validate.MAX_VOCAB, d["vocab_size"])
    act = c.str("activation_function", choices=sorted(HF_GELU) + ["relu2"], default=d["activation_function"])
    n_inner = config.get("n_inner")
    if n_inner is not None:
        n_inner = c.int("n_inner", 1, 4 * validate.MAX_DIM)
    eps = c.number("layer_norm_epsilon", 0.0, 1.0, default=d["layer_norm_epsilon"])
    scale = c.bool("scale_attn_weights", default=True)
    by_layer = c.bool("scale_attn_by_inverse_layer_idx", default=False)
    cross = c.bool("add_cross_attention", default=False)
    tied = c.bool("tie_word_embeddings", default=True)
    unsupported = [(n_inner not in (None, 4 * n_embd), f"n_inner={n_inner} (expected 4 x n_embd)"),
                   (eps != 1e-5, f"layer_norm_epsilon={eps} (expected 1e-5)"),
                   (not scale or by_layer, "another attention scale"),
                   (cross, "cross-attention"),
                   (n_embd % n_head != 0, f"n_embd={n_embd} not a multiple of n_head={n_head}")]
    for bad, what in unsupported:
        if bad:
            raise UserError(f"{where} has {what}, which this code's GPT cannot represent")
    return dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=positions,
                vocab_size=vocab, bias=True, dropout=0.0, gelu_approx=HF_GELU.get(act, "none"),
                mlp="relu2" if act == "relu2" else "gelu", tie_embeddings=tied)


def read_sidecar(path):
    """nanogpt.json of an exported directory, checked: {} when there is none."""
    file = os.path.join(path, SIDECAR)
    if not os.path.isfile(file):
        return {}
    fix = "export the model again (export.py --overwrite), or remove nanogpt.json to import it as plain GPT-2"
    ours = validate.read_json(file, fix)
    f = validate.Fields(ours, file, fix)
    f.bool("bias", default=True)
    f.int("pad_vocab_to", 1, 2**16, default=1)
    if ours.get("tokenizer") is not None:
        validate.tokenizer_meta(f.dict("tokenizer"), f"{file} tokenizer", fix)
    f.str("source", default="")
    f.list("files", item=lambda v: None if isinstance(v, str) else "is not a file name", default=[])
    return ours


def read_hf_weights(path):
    """The tensors of an HF directory (model.safetensors, its sharded form, or pytorch_model.bin),
    renamed to transformers' current GPT2LMHeadModel names."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(os.path.join(path, "model.safetensors")) or os.path.isfile(index):
        from safetensors.torch import load_file
        files = ["model.safetensors"]
        if os.path.isfile(index):
            weight_map = validate.Fields(_read_json(index), index, "export the model again").dict("weight_map", {})
            files = sorted(set(weight_map.values()), key=str)
        load = load_file
    elif os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        files, load = ["pytorch_model.bin"], lambda f: torch.load(f, map_location="cpu", weights_only=True)
    else:
        raise UserError(f"{path} has a config.json but no weights: expected model.safetensors or pytorch_model.bin")
    raw = {}
    if not all(isinstance(n, str) and n and os.path.basename(n) == n for n in files):
        raise UserError(f"{index}: its weight_map names files outside the directory: export the model again")
    for name in files:
        try:
            raw.update(load(os.path.join(path, name)))
        except Exception as e:  # safetensors, pickle and OS errors alike: a damaged or missing file
            raise UserError(f"cannot read {os.path.join(path, name)}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:150] if str(e) else ''}") from None
    out = {}
    for k, v in raw.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffers older files carry: not weights
        if not isinstance(v, torch.Tensor) or str(v.dtype).replace("torch.", "") not in validate.WEIGHT_DTYPES:
            what = str(v.dtype).replace("torch.", "") if isinstance(v, torch.Tensor) else type(v).__name__
            raise UserError(f"{path}: tensor {k} is {what}, but weights must be one of "
                            f"{', '.join(validate.WEIGHT_DTYPES)} (a cast would change them silently)")
        # OpenAI's original upload names GPT2Model's tensors (h.0..., wte.weight) without 'transformer.'
        out[k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k] = v.float()
    return out


def load_hf_gpt2(path):
    """(model_args for GPTConfig, state dict in our naming, tokenizer meta or None when the directory's
    tokenizer is not one this code has) from a local Hugging Face GPT-2 directory."""
    if not is_hf_dir(path):
        raise UserError(f"{path} is not a Hugging Face model directory (it has no config.json)")
    model_args = model_args_from_hf(validate.read_json(os.path.join(path, "config.json"), "export the model again"),
                                    path)
    hf_state = read_hf_weights(path)
    validate.claimed_layers(model_args, hf_state, path, "export the model again", config="its config.json")
    head = hf_state.pop("lm_head.weight", None) if model_args["tie_embeddings"] else None
    problem = state_dict_mismatch(to_hf(_shapes(model_args), model_args), hf_state)
    if problem is None and head is not None and not torch.equal(head, hf_state["transformer.wte.weight"]):
        problem = "lm_head.weight differs from transformer.wte.weight, but config.json says they are tied"
    if problem:
        raise UserError(f"{path}: the weights do not match its config.json: {problem}")
    ours = read_sidecar(path)
    biases = [v for k, v in hf_state.items() if k.endswith(".bias")]
    if ours.get("bias") is False and not any(bool(b.any()) for b in biases):
        model_args["bias"] = False  # exported from a model without biases: import it as it was
    model_args["pad_vocab_to"] = ours.get("pad_vocab_to", 1)  # and with its vocabulary padding
    state = from_hf(hf_state, model_args)
    for name, t in state.items():  # a NaN weight would only show up as a traceback in sampling
        if not bool(torch.isfinite(t).all()):
            raise UserError(f"{path}: tensor {name} holds NaN or infinite values, so the model cannot give a "
                            f"meaningful output: export it again from a good checkpoint")
    return model_args, state, ours.get("tokenizer") or _hf_tokenizer_meta(path)


def _hf_tokenizer_meta(path):
    """Our description of an HF directory's tokenizer when it is GPT-2's BPE, else None."""
    vocab, fix = None, "restore GPT-2's tokenizer files, or export the model again"
    if os.path.isfile(os.path.join(path, "vocab.json")):
        vocab = validate.read_json(os.path.join(path, "vocab.json"), fix)
    elif os.path.isfile(os.path.join(path, "tokenizer.json")):
        whole = validate.read_json(os.path.join(path, "tokenizer.json"), fix)
        model = whole.get("model") if isinstance(whole, dict) else None
        vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocab, dict) or len(vocab) != 50257 or vocab != gpt2_vocab_and_merges()[0]:
        return None
    return GPT2Tokenizer().meta()


def init_from_hf(path, cfg, overrides, data_tokenizer):
    """train.py --init_from=DIR: (cfg with the model's shape, model args, weights). The weights fix the
    shape; block_size below the model's context crops its position table."""
    model_args, state, tokenizer = load_hf_gpt2(path)
    if tokenizer is None or not same_tokenizer(tokenizer, data_tokenizer):
        have = ("an unknown tokenizer" if tokenizer is None
                else f"tokenizer {tokenizer['kind']} (vocab {tokenizer['vocab_size']})")
        raise UserError(f"the model in {path} uses {have}, the dataset tokenizer {data_tokenizer['kind']} (vocab "
                        f"{data_tokenizer['vocab_size']}): fine-tune on data prepared with the model's tokenizer")
    for key in ("n_layer", "n_head", "n_embd", "bias"):
        if key in overrides and overrides[key] != model_args[key]:
            raise UserError(f"cannot fine-tune with {key}={overrides[key]}: the model in {path} has "
                            f"{key}={model_args[key]}")
    if "block_size" in overrides and overrides["block_size"] > model_args["block_size"]:
        raise UserError(f"block_size={overrides['block_size']} is longer than the context of the model in {path} "
                        f"({model_args['block_size']} positions)")
    block_size = min(cfg.block_size, model_args["block_size"])
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:block_size]
    model_args.update(block_size=block_size, dropout=cfg.dropout, pad_vocab_to=cfg.pad_vocab_to)
    rows = padded_vocab_size(GPTConfig(**model_args))
    state.update({name: fit_rows(state[name], rows) for name in VOCAB_ROWS if name in state})
    cfg = replace(cfg, **{k: model_args[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias")})
    return cfg, model_args, state


# ---------------------------------------------------------------------------------------------
# export: model + tokenizer -> a directory GPT2LMHeadModel.from_pretrained loads

@functools.lru_cache(maxsize=1)
def gpt2_vocab_and_merges():
    """GPT-2's vocab.json and merges.txt contents, rebuilt from tiktoken's ranks, offline.

    tiktoken stores only rank per token; a merge is the pair of tokens that BPE joins last to make a
    token, found by running BPE on the token's bytes with only the merges ranked below it."""
    enc = GPT2Tokenizer().enc
    ranks = {enc.decode_single_token_bytes(i): i for i in range(enc.eot_token)}
    byte_char = bytes_to_unicode()
    text = lambda b: "".join(byte_char[x] for x in b)
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            left, right = _bpe(ranks, token, rank)
            merges.append(f"{text(left)} {text(right)}")
    vocab = {text(token): rank for token, rank in ranks.items()}
    vocab[EOT_TEXT] = enc.eot_token
    return vocab, merges


def _bpe(ranks, token, max_rank):
    parts = [bytes([b]) for b in token]
    while True:
        pairs = [(ranks.get(a + b, max_rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank >= max_rank:
            return parts
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def hf_config(model_args, eot_id):
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": model_args["vocab_size"], "n_positions": model_args["block_size"],
            "n_embd": model_args["n_embd"], "n_layer": model_args["n_layer"], "n_head": model_args["n_head"],
            "n_inner": None, "activation_function": ("relu2" if model_args.get("mlp") == "relu2"
                                                     else GELU[model_args.get("gelu_approx", "none")]),
            "resid_pdrop": model_args["dropout"], "embd_pdrop": model_args["dropout"],
            "attn_pdrop": model_args["dropout"], "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "tie_word_embeddings": model_args.get("tie_embeddings", True), "bos_token_id": eot_id,
            "eos_token_id": eot_id, "dtype": "float32"}


def unexportable(model_args):
    """The switches a GPT-2 directory cannot express (relu2, an untied head and zero init it can)."""
    a = model_args
    return [what for bad, what in ((a.get("rope"), "rope"), (a.get("norm", "layernorm") != "layernorm", "norm=rmsnorm"),
                                   (a.get("qk_norm"), "qk_norm"), (a.get("mlp") == "swiglu", "mlp=swiglu"),
                                   (a.get("logit_softcap", 0) > 0, "logit_softcap")) if bad]


def export_marker(hf_dir):
    """The nanogpt.json of an earlier export in hf_dir (a dict), or None when hf_dir holds none: the
    marker that says the folder is this program's export, which only then --overwrite may replace."""
    path = os.path.join(hf_dir, SIDECAR)
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            marker = json.loads(f.read(1 << 24).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("tokenizer"), dict) else None


def check_export_target(hf_dir, overwrite, source_path=None):
    """Refuse an hf_dir the export must not write into: a file, a non-empty folder without --overwrite,
    a folder that is not an earlier export (--overwrite replaces only this program's own export), a run
    folder or one that holds the checkpoint being exported (sample.py would read the export instead).
    Returns the earlier export's marker, or None."""
    if os.path.exists(hf_dir) and not os.path.isdir(hf_dir):
        raise UserError(f"hf_dir {hf_dir} is a file: choose a directory")
    from checkpoint import run_files
    if run_files(hf_dir):
        raise UserError(f"hf_dir {hf_dir} holds a training run ({', '.join(run_files(hf_dir))}): an export there would "
                        f"shadow its checkpoints for sample.py and eval.py; choose another --hf_dir (nothing was written)")
    if source_path is not None:
        src, target = os.path.realpath(source_path), os.path.realpath(hf_dir)
        if src == target or src.startswith(target.rstrip(os.sep) + os.sep):
            raise UserError(f"hf_dir {hf_dir} holds the checkpoint being exported ({source_path}): choose a folder "
                            f"outside the run (nothing was written)")
    if not (os.path.isdir(hf_dir) and os.listdir(hf_dir)):
        return None
    if not overwrite:
        raise UserError(f"{hf_dir} already exists and is not empty: pass --overwrite to replace an export there, "
                        f"or choose another --hf_dir (nothing was written)")
    marker = export_marker(hf_dir)
    if marker is None:
        raise UserError(f"{hf_dir} is not an export of this program (it has no {SIDECAR} written by export.py): "
                        f"--overwrite replaces only an earlier export; choose an empty or new --hf_dir "
                        f"(nothing was written)")
    return marker


def export_hf(model, tokenizer_meta, hf_dir, overwrite=False, source="", source_path=None):
    """Write `model` and its tokenizer as a Hugging Face GPT-2 directory; returns the files written.
    Other files in hf_dir are left alone; with overwrite (only over an earlier export: its nanogpt.json
    says so), that export's files are replaced. One export per folder at a time (a lock beside it)."""
    kind = tokenizer_meta.get("kind")
    if kind not in ("gpt2", "char", "bpe"):
        raise UserError(f"cannot export tokenizer kind {kind!r}: export writes the gpt2, char and bpe tokenizers")
    model_args = asdict(model.config)
    missing = unexportable(model_args)
    if missing:
        raise UserError(f"cannot export: Hugging Face's GPT-2 has no {', '.join(missing)}; this model needs "
                        f"this code (sample.py, eval.py) or a converter of your own")
    check_export_target(hf_dir, overwrite, source_path)
    eot = tokenizer_meta["eot_id"]
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    files = {"config.json": hf_config(model_args, eot),
             SIDECAR: {"tokenizer": tokenizer_meta, "bias": model_args["bias"],
                       "pad_vocab_to": model_args["pad_vocab_to"], "source": source},
             "README.md": export_readme(model_args, tokenizer_meta, source, model.get_num_params())}
    if kind == "gpt2":
        vocab, merges = gpt2_vocab_and_merges()
        files.update({"vocab.json": vocab, "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
                      "special_tokens_map.json": special,
                      "tokenizer_config.json": {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                                                "model_max_length": model_args["block_size"], **special}})
    if kind == "bpe":  # the trained BPE as the tokenizers file it is, with end-of-text at our id
        from tokenizer import BPETokenizer
        tok = BPETokenizer(tokenizer_meta["json"]).tok
        tok.add_special_tokens([EOT_TEXT])  # takes the next id: one past the trained vocabulary, like ours
        files.update({"tokenizer.json": tok.to_str(), "special_tokens_map.json": special,
                      "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast",
                                                "model_max_length": model_args["block_size"], **special}})
    parent, name = os.path.split(os.path.abspath(hf_dir))
    try:
        os.makedirs(parent, exist_ok=True)  # the folder hf_dir goes in (hf_dir itself comes last)
        lock = hold_lock(os.path.join(parent, f".{name}.export.lock"), lambda holder: (
            f"another export.py (process {holder}) is writing {hf_dir}: wait for it to finish, or choose another "
            f"--hf_dir (nothing was written)"))
    except OSError as e:
        raise UserError(f"cannot write the export to {hf_dir} (nothing was written): {os_error(e)}") from None
    try:
        previous = check_export_target(hf_dir, overwrite, source_path)  # again, now that we hold the folder
        written = sorted(set(files) | {"model.safetensors"})
        files[SIDECAR] = {**files[SIDECAR], "exported_by": "export.py", "files": written}
        _write_export(model, model_args, files, hf_dir, parent, name, previous)
    except OSError as e:
        raise UserError(f"cannot write the export to {hf_dir} ({hf_dir} is as it was): {os_error(e)}") from None
    finally:
        release_lock(lock)
    return written


def _write_export(model, model_args, files, hf_dir, parent, name, previous):
    """Build the export in a hidden sibling (.NAME.partial), then move its files in: a crash, a full disk
    or a signal leaves hf_dir as it was and no partial copy behind (the next export clears one)."""
    from safetensors.torch import save_file
    work = os.path.join(parent, f".{name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        os.makedirs(work)
        for fname, content in files.items():
            safeio.write_text(os.path.join(work, fname),
                              content if isinstance(content, str) else json.dumps(content, indent=2, ensure_ascii=False))
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        tensors = to_hf(state, model_args)
        target = os.path.join(work, "model.safetensors")
        try:
            save_file(tensors, target, metadata={"format": "pt"})
        except Exception as e:  # safetensors reports a full disk as its own SafetensorError
            raise safeio.library_write_error(e, target, sum(t.numel() * t.element_size() for t in tensors.values())) \
                from None
        with open(target, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(target, os.stat(os.path.join(work, "config.json")).st_mode)
        os.makedirs(hf_dir, exist_ok=True)
    except BaseException:  # a full disk, a Ctrl-C: hf_dir keeps what it had, and no partial copy stays behind
        shutil.rmtree(work, ignore_errors=True)
        raise
    # only names an export writes, and of those only what the earlier export says it wrote, are removed
    earlier = (previous or {}).get("files") if isinstance((previous or {}).get("files"), list) else EXPORT_FILES
    for fname in EXPORT_FILES:
        if os.path.exists(os.path.join(work, fname)):
            os.replace(os.path.join(work, fname), os.path.join(hf_dir, fname))
        elif previous is not None and fname in earlier and os.path.lexists(os.path.join(hf_dir, fname)):
            os.remove(os.path.join(hf_dir, fname))  # a previous export's file that this one does not have
    os.rmdir(work)
    safeio.fsync_dir(hf_dir)


def export_readme(model_args, tokenizer_meta, source, n_params):
    a = model_args
    lines = ["# GPT-2 model exported by nanogpt-style export.py", "",
             f"{n_params / 1e6:.2f}M parameters: {a['n_layer']} layers, {a['n_head']} heads, {a['n_embd']} wide, "
             f"context {a['block_size']} tokens, vocabulary {a['vocab_size']}, "
             f"{'tanh-approximate' if a.get('gelu_approx') == 'tanh' else 'exact (erf)'} GELU. Source: {source}.", "",
             "```python", "from transformers import GPT2LMHeadModel",
             'model = GPT2LMHeadModel.from_pretrained("THIS_DIRECTORY")', "```", "",
             "Back into nanogpt-style code: `python sample.py --out_dir THIS_DIRECTORY`, "
             "`python train.py --init_from=THIS_DIRECTORY` (fine-tuning).", "", "## Encoding text", ""]
    if tokenizer_meta["kind"] == "gpt2":
        lines += ["GPT-2's byte-level BPE (50,257 ids; `<|endoftext|>` = 50256 separates documents). "
                  "`AutoTokenizer.from_pretrained(\"THIS_DIRECTORY\")` loads it from vocab.json and merges.txt and "
                  "gives the same ids as `tiktoken.get_encoding(\"r50k_base\").encode_ordinary(text)`, except that "
                  "the literal text `<|endoftext|>` becomes the special token (tiktoken's ordinary encoding keeps it "
                  "as text). To generate from scratch, start from the id 50256."]
    elif tokenizer_meta["kind"] == "bpe":
        lines += [f"A byte-level BPE trained on this model's data ({tokenizer_meta['vocab_size']} ids; "
                  f"`<|endoftext|>` = {tokenizer_meta['eot_id']} separates documents). "
                  "`AutoTokenizer.from_pretrained(\"THIS_DIRECTORY\")` loads it from tokenizer.json and gives the same "
                  "ids as training did, except that the literal text `<|endoftext|>` becomes the special token "
                  f"(training kept it as text). To generate from scratch, start from the id {tokenizer_meta['eot_id']}."]
    else:
        chars = tokenizer_meta["chars"]
        lines += [f"Character level, no Hugging Face tokenizer: id i is the i-th character of the table below "
                  f"({len(chars)} characters), and id {tokenizer_meta['eot_id']} is end-of-text (it ends every "
                  f"document; start from it to generate from scratch). Text with other characters cannot be "
                  f"encoded. nanogpt.json holds the same table.", "", "```python",
                  f"chars = {json.dumps(chars, ensure_ascii=False)}", "stoi = {c: i for i, c in enumerate(chars)}",
                  "ids = [stoi[c] for c in text]", f"text = ''.join(chars[i] for i in ids if i != {len(chars)})", "```",
                  "", "| id | character (JSON-escaped) | code point |", "| --- | --- | --- |"]
        lines += [f"| {i} | `` {_escape(c)} `` | U+{ord(c):04X} |" for i, c in enumerate(chars)]
    return "\n".join(lines) + "\n"


def _escape(c):
    # JSON escapes make newlines and tabs visible; a GitHub table needs "|" escaped even inside code
    return json.dumps(c, ensure_ascii=False)[1:-1].replace("|", "\\|")


def _read_json(path):
    return validate.read_json(path, "export the model again")

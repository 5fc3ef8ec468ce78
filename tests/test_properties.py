"""Property-based tests of the one check for everything read (validate.py): hypothesis replaces or deletes
one field of a Hugging Face config.json or nanogpt.json, a meta.json, a checkpoint's dict, a prepare
.jsonl line or a HellaSwag line with an arbitrary value, and the command that reads it must either work
or stop with one `error:` line: a non-zero exit, no traceback, and every file it read byte for byte as
it was. Examples are bounded (max_examples) so that the whole file runs in well under a minute."""

import json
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import checkpoint
import eval as eval_script
import export as export_script
import prepare as prepare_script
import sample as sample_script
import train as train_script
from conftest import assert_one_line_error, run_main, snapshot, tiny_train_config

DELETE = object()  # the field is removed instead of replaced
# PROPERTY_EXAMPLES=500 PROPERTY_SEED=random for a longer hunt; the default is fixed and bounded (CI)
SETTINGS = settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", 25)), deadline=None,
                    derandomize=os.environ.get("PROPERTY_SEED") != "random",
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
GENERATED = {}  # examples run per property, for the report (printed with -s)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.one_of(scalars, st.just(DELETE), st.lists(scalars, max_size=4),
                   st.dictionaries(st.text(max_size=6), scalars, max_size=3))


def mutate(obj, path, value):
    """A copy of obj (nested dicts) with the field at path replaced by value, or removed (DELETE); a
    path through something that is not a dict replaces that thing."""
    obj = json.loads(json.dumps(obj)) if not isinstance(obj, dict) or not _has_tensors(obj) else dict(obj)
    node = obj
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node[key] = dict(node[key])
        node = node[key]
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return obj


def _has_tensors(d):
    return any(isinstance(v, torch.Tensor) or (isinstance(v, dict) and _has_tensors(v)) for v in d.values())


def count(name):
    GENERATED[name] = GENERATED.get(name, 0) + 1


def assert_works_or_one_line(code, err):
    if code != 0:
        assert_one_line_error(code, err)
    assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def world(data_root, tmp_path_factory):
    """A tiny trained run and its Hugging Face export."""
    tmp = tmp_path_factory.mktemp("properties")
    run = tmp / "run"
    train_script.train(tiny_train_config(data_root, run, max_iters=2, lr_decay_iters=2, eval_interval=2))
    hf = tmp / "hf"
    export_script.export(export_script.ExportConfig(out_dir=str(run), hf_dir=str(hf)), info=lambda m: None)
    return {"run": run, "hf": hf, "tmp": tmp, "data": data_root}


def _json_file_property(world, capsys, name, path, value):
    hf = world["hf"]
    file = hf / name
    original = file.read_bytes()
    obj = mutate(json.loads(original), path, value)
    try:
        file.write_text(json.dumps(obj, allow_nan=True))
        before = snapshot(str(hf))
        code, _, err = run_main(sample_script.main, [f"--out_dir={hf}", "--max_new_tokens=2", "--num_samples=1",
                                                     "--device=cpu"], capsys)
        assert_works_or_one_line(code, err)
        assert snapshot(str(hf)) == before
    finally:
        file.write_bytes(original)


HF_CONFIG_KEYS = ["n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "activation_function", "n_inner",
                  "layer_norm_epsilon", "model_type", "tie_word_embeddings", "scale_attn_weights",
                  "scale_attn_by_inverse_layer_idx", "add_cross_attention", "bos_token_id", "architectures"]


@SETTINGS
@given(key=st.sampled_from(HF_CONFIG_KEYS), value=values)
def test_any_config_json_field(world, capsys, key, value):
    count("config.json")
    _json_file_property(world, capsys, "config.json", (key,), value)


SIDECAR_PATHS = [("bias",), ("pad_vocab_to",), ("source",), ("files",), ("tokenizer",), ("tokenizer", "kind"),
                 ("tokenizer", "chars"), ("tokenizer", "vocab_size"), ("tokenizer", "eot_id")]


@SETTINGS
@given(path=st.sampled_from(SIDECAR_PATHS), value=values)
def test_any_nanogpt_json_field(world, capsys, path, value):
    count("nanogpt.json")
    _json_file_property(world, capsys, "nanogpt.json", path, value)


CKPT_PATHS = ([("model_args", k) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias",
                                           "dropout", "pad_vocab_to", "rope", "norm", "mlp", "tie_embeddings",
                                           "logit_softcap", "gelu_approx", "n_experts")]
              + [("tokenizer",), ("tokenizer", "kind"), ("tokenizer", "chars"), ("tokenizer", "vocab_size"),
                 ("tokenizer", "eot_id"), ("iter_num",), ("best_val_loss",), ("config",), ("model_args",),
                 ("model",), ("model", "transformer.wte.weight"), ("model", "transformer.h.0.attn.c_attn.weight")])
tensors = st.sampled_from([torch.zeros(3), torch.zeros(60, 32, dtype=torch.int64), torch.full((60, 32), float("nan")),
                           torch.zeros(60, 32, dtype=torch.bfloat16), torch.zeros(60, 32, dtype=torch.complex64),
                           torch.zeros(1).expand(60, 32)])


@SETTINGS
@given(path=st.sampled_from(CKPT_PATHS), value=st.one_of(values, tensors))
def test_any_checkpoint_field(world, capsys, path, value):
    count("checkpoint")
    ckpt = checkpoint.load(str(world["run"] / "best.pt"))
    ckpt.pop("crc32", None)
    edited = mutate(ckpt, path, value)
    d = world["tmp"] / "ckpt_property"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    checkpoint.save(edited, str(d / "best.pt"))
    before = snapshot(str(d))
    code, _, err = run_main(sample_script.main, [f"--out_dir={d / 'best.pt'}", "--max_new_tokens=2",
                                                 "--num_samples=1", "--device=cpu"], capsys)
    assert_works_or_one_line(code, err)
    assert snapshot(str(d)) == before


META_PATHS = [("tokenizer",), ("tokenizer", "kind"), ("tokenizer", "chars"), ("tokenizer", "vocab_size"),
              ("tokenizer", "eot_id"), ("counts",), ("counts", "train"), ("counts", "train", "tokens"),
              ("counts", "val", "tokens"), ("format_version",), ("dtype",), ("name",), ("max_tokens",)]
TRAIN = ["--device=cpu", "--n_layer=1", "--n_head=1", "--n_embd=8", "--block_size=8", "--batch_size=2",
         "--gradient_accumulation_steps=1", "--max_iters=1", "--eval_iters=1", "--compile=False",
         "--sample_tokens=0", "--plot=False"]


@SETTINGS
@given(path=st.sampled_from(META_PATHS), value=values)
def test_any_meta_json_field(world, capsys, path, value):
    count("meta.json")
    root = world["tmp"] / "meta_property"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(os.path.join(world["data"], "tiny_char"), root / "d")
    meta = json.loads((root / "d" / "meta.json").read_text())
    (root / "d" / "meta.json").write_text(json.dumps(mutate(meta, path, value), allow_nan=True))
    before = snapshot(str(root / "d"))
    code, _, err = run_main(train_script.main, [*TRAIN, "--dataset=d", f"--data_root={root}",
                                                f"--out_dir={root / 'out'}"], capsys)
    assert_works_or_one_line(code, err)
    assert snapshot(str(root / "d")) == before


json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=8)
lines = st.one_of(json_values.map(lambda v: json.dumps({"text": v}).encode()),
                  json_values.map(lambda v: json.dumps(v).encode()),
                  st.binary(max_size=40),
                  st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n))


@SETTINGS
@given(line=lines)
def test_any_prepare_jsonl_line(world, capsys, line):
    count("prepare jsonl")
    tmp = world["tmp"] / "jsonl_property"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "d.jsonl").write_bytes(b'{"text": "First line, fine."}\n' + line.replace(b"\n", b" ") + b"\n")
    before = snapshot(str(tmp))
    code, _, err = run_main(prepare_script.main, ["--input", str(tmp / "d.jsonl"), "--tokenizer", "char",
                                                  "--data_root", str(tmp / "data"), "--name", "x",
                                                  "--num_proc", "1"], capsys)
    assert_works_or_one_line(code, err)
    after = snapshot(str(tmp))
    assert {p: after[p] for p in before} == before
    if code != 0:
        assert set(after) == set(before), "a failed prepare left files"


HS = {"activity_label": "Cooking", "ctx_a": "A man", "ctx_b": "cuts", "endings": ["a", "b", "c", "d"], "label": 0}
HS_PATHS = [(k,) for k in HS] + [("endings", "0")]


@SETTINGS
@given(path=st.sampled_from(HS_PATHS), value=st.one_of(values, json_values))
def test_any_hellaswag_field(world, capsys, path, value):
    count("hellaswag")
    if path == ("endings", "0"):
        doc = {**HS, "endings": ["b", "c", "d"] if value is DELETE else [value, "b", "c", "d"]}
    else:
        doc = mutate(HS, path, value)
    tmp = world["tmp"] / "hs_property"
    tmp.mkdir(exist_ok=True)
    (tmp / "hs.jsonl").write_text(json.dumps(HS) + "\n" + json.dumps(doc, allow_nan=True) + "\n")
    before = snapshot(str(tmp))
    code, out, err = run_main(eval_script.main, [f"--out_dir={world['run']}", "--task=hellaswag",
                                                 f"--task_file={tmp / 'hs.jsonl'}", "--device=cpu"], capsys)
    assert_works_or_one_line(code, err)
    assert snapshot(str(tmp)) == before


def test_report_generated_counts():
    """Runs last in this file: how many generated cases ran (pytest -s shows it)."""
    print(f"\ngenerated cases run: {GENERATED} (total {sum(GENERATED.values())})")

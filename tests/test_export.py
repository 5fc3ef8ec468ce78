"""Hugging Face interop: export loads in transformers with our logits, imports round-trip exactly,
GPT-2's tokenizer files encode as tiktoken does, and bad input is a one-line error."""

import copy
import json
import os

import pytest
import torch

import checkpoint
import hf
from configurator import UserError
from conftest import read_metrics, tiny_train_config
from export import ExportConfig, export
from loading import load_model
from sample import SampleConfig, sample
from train import TrainConfig, train

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """Two tiny trained runs: char without biases (TrainConfig's default) and GPT-2 BPE with biases."""
    root = tmp_path_factory.mktemp("runs")
    train(tiny_train_config(data_root, root / "char", max_iters=6, eval_interval=6))
    train(tiny_train_config(data_root, root / "gpt2", dataset="tiny_gpt2", bias=True, max_iters=2, eval_interval=2))
    return root


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    for name in ("char", "gpt2"):
        export(ExportConfig(out_dir=str(runs / name), hf_dir=str(root / name)), info=lambda m: None)
    return root


def all_logits(model, x):
    return model(x, torch.zeros_like(x))[0]


def assert_same_logits(ours, theirs, x):
    """Our model's logits equal transformers' for the same weights, both computed in float64 (on
    copies). In float32 the two differ by rounding alone, and by how much depends on the order of the
    operations: GPT-2's tanh GELU is one fused kernel here and six tensor ops in transformers, and a
    matmul's summation order can change with the thread count and the kernel BLAS picks, so a float32
    tolerance is a guess that a loaded machine once broke (4e-5 against 1e-5). In float64 the unit
    roundoff is 1.1e-16: a forward of these sizes (a few hundred terms per dot product, logits below 10)
    rounds by less than about 1e-12 (measured: 1.3e-15), while a wrong mapping moves logits by far more
    (the other GELU flavour: > 1e-5, test_the_float64_check_tells_the_two_gelus_apart). Hence 1e-10."""
    a = all_logits(copy.deepcopy(ours).double(), x)
    b = copy.deepcopy(theirs).double()(x).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def random_hf_model(tmp_path, activation, vocab_size=66, tokenizer=None):
    """A GPT2LMHeadModel made here, every tensor random (biases too), saved with save_pretrained."""
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                                     activation_function=activation, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.save_pretrained(tmp_path)
    if tokenizer is not None:  # what export.py records, so that train.py can check the data
        (tmp_path / "nanogpt.json").write_text(json.dumps({"tokenizer": tokenizer}))
    return model


@pytest.mark.parametrize("name", ["char", "gpt2"])
def test_export_loads_in_transformers_with_our_logits(runs, exported, name):
    ours = load_model(str(runs / name), "cpu")[0]
    theirs = transformers.GPT2LMHeadModel.from_pretrained(exported / name).eval()
    x = torch.randint(ours.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    assert_same_logits(ours, theirs, x)
    config = json.loads((exported / name / "config.json").read_text())
    assert config["activation_function"] == "gelu"  # our exact GELU


@pytest.mark.parametrize("name", ["char", "gpt2"])
def test_export_then_import_round_trips_exactly(runs, exported, name):
    ours = load_model(str(runs / name), "cpu")[0]
    back, tokenizer, _, info = load_model(str(exported / name), "cpu")
    assert back.config == ours.config  # bias=False survives the zero biases HF needs, and the vocabulary padding
    assert ours.config.pad_vocab_to == 64 and ours.lm_head.weight.shape[0] > ours.config.vocab_size
    config = json.loads((exported / name / "config.json").read_text())
    assert config["vocab_size"] == ours.config.vocab_size  # the padding rows are not exported
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert info["tokenizer"] == checkpoint.load(checkpoint.find(str(runs / name)))["tokenizer"]


def test_gpt2_tokenizer_files_encode_like_tiktoken(exported, shakespeare_text):
    from tokenizer import GPT2Tokenizer
    ours = GPT2Tokenizer()
    texts = [shakespeare_text[:20000], "héllo  wörld\n\n\n x 日本語 🎉", "I'm won't they've   12345 3.14\t\r\n"]
    for cls in (transformers.AutoTokenizer, transformers.GPT2TokenizerFast):
        theirs = cls.from_pretrained(exported / "gpt2")
        assert theirs.eos_token_id == 50256
        for text in texts:
            assert theirs(text)["input_ids"] == ours.encode(text)
    vocab, merges = hf.gpt2_vocab_and_merges()
    assert len(vocab) == 50257 and len(merges) == 50000 and merges[0] == "Ġ t"  # GPT-2's first merge


def test_char_export_documents_its_tokenizer(exported, data_root):
    readme = (exported / "char" / "README.md").read_text()
    chars = json.loads((exported / "char" / "nanogpt.json").read_text())["tokenizer"]["chars"]
    assert f"chars = {json.dumps(chars)}" in readme and "| 1 | ``   `` | U+0020 |" in readme
    assert not (exported / "char" / "vocab.json").exists()
    assert "AutoTokenizer" in (exported / "gpt2" / "README.md").read_text()


@pytest.mark.parametrize("activation, approx", [("gelu_new", "tanh"), ("gelu", "none")])
def test_import_a_transformers_model(tmp_path, activation, approx):
    theirs = random_hf_model(tmp_path, activation)
    model_args, state, tokenizer = hf.load_hf_gpt2(str(tmp_path))
    assert model_args["gelu_approx"] == approx and model_args["bias"] and tokenizer is None
    from model import GPT, GPTConfig
    ours = GPT(GPTConfig(**model_args)).eval()
    ours.load_state_dict(state)
    x = torch.randint(66, (2, 24), generator=torch.Generator().manual_seed(0))
    assert_same_logits(ours, theirs, x)
    # and back out: a tanh model exports as gelu_new, with the same logits
    hf.export_hf(ours, {"kind": "char", "vocab_size": 66, "eot_id": 65, "chars": "".join(map(chr, range(65, 130)))},
                 str(tmp_path / "again"))
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "again").eval()
    assert again.config.activation_function == activation
    assert_same_logits(ours, again, x)


def test_the_float64_check_tells_the_two_gelus_apart(tmp_path):
    """assert_same_logits' tolerance is far below what a wrong GELU flavour does to the logits."""
    from model import GPT, GPTConfig
    theirs = random_hf_model(tmp_path, "gelu_new")
    model_args, state, _ = hf.load_hf_gpt2(str(tmp_path))
    wrong = GPT(GPTConfig(**{**model_args, "gelu_approx": "none"})).eval()
    wrong.load_state_dict(state)
    x = torch.randint(66, (2, 24), generator=torch.Generator().manual_seed(0))
    with pytest.raises(AssertionError):
        assert_same_logits(wrong, theirs, x)
    gap = (all_logits(wrong.double(), x) - theirs.double()(x).logits).abs().max()
    assert gap > 1e-5


def test_original_gpt2_file_layout_imports(tmp_path):
    """OpenAI's upload names tensors without 'transformer.' and carries attention-mask buffers."""
    theirs = random_hf_model(tmp_path, "gelu_new")
    from safetensors.torch import load_file
    state = load_file(tmp_path / "model.safetensors")
    old = {k.removeprefix("transformer."): v for k, v in state.items()}
    old.update({f"h.{i}.attn.bias": torch.tril(torch.ones(1, 1, 24, 24)) for i in range(2)})
    os.remove(tmp_path / "model.safetensors")
    torch.save(old, tmp_path / "pytorch_model.bin")
    model_args, state, _ = hf.load_hf_gpt2(str(tmp_path))
    torch.testing.assert_close(state["transformer.h.1.attn.c_attn.weight"],
                               theirs.transformer.h[1].attn.c_attn.weight.t())


def test_sample_from_an_exported_directory(exported):
    import io
    out = io.StringIO()
    texts = sample(SampleConfig(out_dir=str(exported / "char"), start="ROMEO:", num_samples=1, max_new_tokens=8,
                                device="cpu"), out=out, info=lambda m: None)
    assert texts[0].startswith("ROMEO:") and texts[0] in out.getvalue()


def test_fine_tune_from_a_directory_starts_at_its_weights(runs, exported, data_root, tmp_path):
    # the same eval windows score the original run's final weights and the imported ones at step 0
    cfg = tiny_train_config(data_root, tmp_path / "ft", init_from=str(exported / "char"), max_iters=2, eval_interval=2)
    train(cfg)
    first = read_metrics(tmp_path / "ft")[0]
    last = [e for e in read_metrics(runs / "char") if "val_loss" in e][-1]
    assert first["iter"] == 0 and first["val_loss"] == pytest.approx(last["val_loss"], abs=1e-5)
    saved = checkpoint.load(str(tmp_path / "ft" / "ckpt.pt"))
    assert saved["model_args"]["bias"] is False and saved["config"]["init_from"] == str(exported / "char")


def test_fine_tune_keeps_gelu_new_through_resume_and_crops_the_context(data_root, tmp_path):
    from shards import read_meta
    char = read_meta(os.path.join(data_root, "tiny_char"))["tokenizer"]
    random_hf_model(tmp_path / "hf", "gelu_new", vocab_size=char["vocab_size"], tokenizer=char)
    out = tmp_path / "ft"
    overrides = dict(init_from=str(tmp_path / "hf"), block_size=16, max_iters=2, eval_interval=2)
    train(tiny_train_config(data_root, out, **overrides), overrides)
    ckpt = checkpoint.load(str(out / "ckpt.pt"))
    assert ckpt["model_args"]["gelu_approx"] == "tanh" and ckpt["model_args"]["block_size"] == 16
    assert ckpt["model"]["transformer.wpe.weight"].shape == (16, 32) and ckpt["config"]["n_head"] == 4
    resume = {"init_from": "resume", "out_dir": str(out), "max_iters": 3}
    train(TrainConfig(**resume), resume)
    assert checkpoint.load(str(out / "ckpt.pt"))["model_args"]["gelu_approx"] == "tanh"


# ---------------------------------------------------------------------------------------------
# bad input: one clear line each, nothing written

def test_hf_dir_that_exists_is_refused_unless_overwrite(runs, exported, tmp_path):
    target = tmp_path / "hf"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists and is not empty.*--overwrite"):
        export(ExportConfig(out_dir=str(runs / "char"), hf_dir=str(target)))
    with pytest.raises(UserError, match="not an export of this program.*nothing was written"):  # --overwrite: only
        export(ExportConfig(out_dir=str(runs / "char"), hf_dir=str(target), overwrite=True))  # over an export
    assert os.listdir(target) == ["notes.txt"]
    (target / "notes.txt").unlink()
    export(ExportConfig(out_dir=str(runs / "gpt2"), hf_dir=str(target), overwrite=True), info=lambda m: None)
    (target / "notes.txt").write_text("mine")  # the user's file in an export folder
    export(ExportConfig(out_dir=str(runs / "char"), hf_dir=str(target), overwrite=True), info=lambda m: None)
    assert not (target / "vocab.json").exists()  # the earlier export's tokenizer files go, the user's file stays
    assert (target / "notes.txt").read_text() == "mine" and not (tmp_path / ".hf.partial").exists()


def test_a_tokenizer_the_export_cannot_express(runs, tmp_path):
    model = load_model(str(runs / "char"), "cpu")[0]
    with pytest.raises(UserError, match="cannot export tokenizer kind 'unigram'"):
        hf.export_hf(model, {"kind": "unigram", "vocab_size": 60, "eot_id": 59}, str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_hf_directory_that_does_not_match_its_config(exported, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(exported / "char", bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    with pytest.raises(UserError, match=r"config.json: transformer.wte.weight has shape \(\d+, 32\) where"):
        load_model(str(bad), "cpu")
    (bad / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(UserError, match="activation_function='relu'"):
        load_model(str(bad), "cpu")
    (bad / "config.json").write_text(json.dumps(config))
    os.remove(bad / "model.safetensors")
    with pytest.raises(UserError, match="no weights: expected model.safetensors"):
        load_model(str(bad), "cpu")


def test_checkpoint_that_does_not_match_its_config(runs, tmp_path):
    ckpt = checkpoint.load(str(runs / "char" / "best.pt"))
    ckpt["model_args"]["n_embd"] = 64
    checkpoint.save(ckpt, str(tmp_path / "best.pt"))
    with pytest.raises(UserError, match="weights do not match the model config.*has shape"):
        load_model(str(tmp_path / "best.pt"), "cpu")


def test_fine_tune_on_data_with_another_tokenizer(exported, data_root, tmp_path):
    cfg = tiny_train_config(data_root, tmp_path, dataset="tiny_gpt2", init_from=str(exported / "char"))
    with pytest.raises(UserError, match="uses tokenizer char .* the dataset tokenizer gpt2"):
        train(cfg)
    assert not (tmp_path / "ckpt.pt").exists()
    with pytest.raises(UserError, match="cannot fine-tune with n_embd=64"):
        train(tiny_train_config(data_root, tmp_path, init_from=str(exported / "char"), n_embd=64), {"n_embd": 64})
    with pytest.raises(UserError, match="expected scratch, resume, auto, or a Hugging Face GPT-2 directory"):
        train(tiny_train_config(data_root, tmp_path, init_from=str(tmp_path / "missing")))


def test_a_trained_bpe_model_exports_with_its_tokenizer(tmp_path, shakespeare_text):
    """A model on a trained BPE: transformers loads model and tokenizer; ids and logits match ours."""
    transformers = pytest.importorskip("transformers")
    import torch
    from prepare import PrepareConfig, prepare
    from sources import SourceConfig
    from tokenizer import from_meta
    from train import train
    from conftest import tiny_train_config
    corpus = tmp_path / "c.txt"
    corpus.write_text(shakespeare_text[:50000])
    meta = prepare(PrepareConfig(data_root=str(tmp_path / "data"), name="b", tokenizer="bpe", vocab_size=400,
                                 num_proc=1), [SourceConfig(input=[str(corpus)])])
    train(tiny_train_config(str(tmp_path / "data"), tmp_path / "run", dataset="b", max_iters=2))
    export(ExportConfig(out_dir=str(tmp_path / "run"), hf_dir=str(tmp_path / "hf")), info=lambda m: None)
    ours = from_meta(meta["tokenizer"])
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = shakespeare_text[60000:62000]
    assert theirs(text)["input_ids"] == ours.encode(text) and theirs.eos_token_id == ours.eot_id
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    model = load_model(str(tmp_path / "run"), "cpu")[0]
    ids = torch.tensor([ours.encode(text)[:32]])
    assert_same_logits(model, hf_model, ids)
    assert "trained on this model's data" in (tmp_path / "hf" / "README.md").read_text()
    model2, tok2 = load_model(str(tmp_path / "hf"), "cpu")[:2]  # and back
    assert tok2.encode(text) == ours.encode(text)


@pytest.mark.parametrize("switches", [{"mlp": "relu2"}, {"tie_embeddings": False, "zero_init": True}])
def test_switches_gpt2_can_express_export_with_equal_logits(switches, tmp_path):
    transformers = pytest.importorskip("transformers")
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=66, **switches)).eval()
    with torch.no_grad():  # zero init would make every logit 0: give the weights something to carry
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    chars = "".join(chr(65 + i) for i in range(65))
    hf.export_hf(model, {"kind": "char", "vocab_size": 66, "eot_id": 65, "chars": chars}, str(tmp_path / "hf"))
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    ids = torch.randint(66, (2, 16))
    assert_same_logits(model, theirs, ids)
    args, state, _ = hf.load_hf_gpt2(str(tmp_path / "hf"))  # and back, exactly
    back = GPT(GPTConfig(**args))
    back.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))


def test_switches_gpt2_cannot_express_are_refused(tmp_path):
    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=66, rope=True, mlp="swiglu"))
    with pytest.raises(UserError, match="has no rope, mlp=swiglu"):
        hf.export_hf(model, {"kind": "char", "vocab_size": 66, "eot_id": 65, "chars": "x" * 65}, str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()

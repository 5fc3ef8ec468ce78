import math

import pytest
import torch

import hf
from generate import sample_next
from metrics import estimate_mfu, peak_flops
from model import GPT, GPTConfig


def small_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=101, bias=True)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def test_parameter_count_matches_huggingface_gpt2():
    # GPT2LMHeadModel(GPT2Config(n_embd=256, n_layer=6, n_head=4, vocab_size=50257, n_positions=1024))
    model = GPT(GPTConfig(n_embd=256, n_layer=6, n_head=4, vocab_size=50257, block_size=1024, bias=True))
    assert model.get_num_params() == 17_867_008


def test_loss_at_init_is_about_ln_vocab():
    vocab = 1000
    model = small_model(vocab_size=vocab)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(vocab, (8, 32), generator=g)
    y = torch.randint(vocab, (8, 32), generator=g)
    _, loss = model(x, y)
    assert abs(loss.item() - math.log(vocab)) < 0.05


def test_future_tokens_do_not_change_past_logits():
    model = small_model()
    x = torch.randint(101, (2, 32))
    x2 = x.clone()
    x2[:, 20:] = torch.randint(101, (2, 12))
    logits, _ = model(x, torch.zeros_like(x))
    logits2, _ = model(x2, torch.zeros_like(x))
    torch.testing.assert_close(logits[:, :20], logits2[:, :20])
    assert not torch.allclose(logits[:, 20:], logits2[:, 20:])


def test_kv_cache_greedy_generation_equals_full_recomputation():
    model = small_model()
    prompts = [[5, 7, 11, 13], [1], list(range(20, 40))]  # different lengths decode together
    n_new = 10  # the longest prompt reaches position 30 < block_size 32: within the context
    cached = model.generate(prompts, n_new, temperature=0, use_cache=True)
    full = model.generate(prompts, n_new, temperature=0, use_cache=False)
    assert cached == full
    assert all(len(c) == n_new for c in cached)


def test_batched_generation_equals_one_prompt_at_a_time():
    model = small_model()
    prompts = [[3, 4, 5], [9] * 12, [42]]
    together = model.generate(prompts, 15, temperature=0)
    alone = [model.generate([p], 15, temperature=0)[0] for p in prompts]
    assert together == alone


def test_generation_continues_past_the_context_length():
    model = small_model()
    out = model.generate([[1, 2, 3]], 100, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert len(out[0]) == 100 and all(0 <= t < 101 for t in out[0])


def test_generation_stops_at_end_of_text():
    model = small_model()
    first = model.generate([[1, 2, 3]], 1, temperature=0)[0][0]
    # declare the greedy first token to be end-of-text: the row stops before producing anything
    assert model.generate([[1, 2, 3], [4, 5]], 10, temperature=0, eot_id=first)[0] == []


def test_sampling_controls():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature=0).item() == 1
    assert all(sample_next(logits, 1.0, top_k=1, generator=g).item() == 1 for _ in range(20))
    assert all(sample_next(logits, 1.0, top_p=0.01, generator=g).item() == 1 for _ in range(20))
    # top_k=2 only ever gives the two most likely tokens; top_p=0.9 cuts the least likely one
    assert {sample_next(logits, 5.0, top_k=2, generator=g).item() for _ in range(200)} == {1, 2}
    probs = torch.softmax(logits, -1)[0]
    assert probs[3] < 0.1 and {sample_next(logits, 1.0, top_p=0.9, generator=g).item() for _ in range(500)} <= {0, 1, 2}


def test_optimizer_decays_matrices_only():
    model = small_model()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.get_num_params()


def test_mfu_uses_the_device_peak(monkeypatch):
    assert peak_flops("cpu") is None and estimate_mfu(1e9, 1e5, "cpu") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert estimate_mfu(1e9, 1e5, "cuda") == pytest.approx(1e14 / 989e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40S")
    assert peak_flops("cuda") == 362e12  # not L4's
    # H100 SXM and PCIe differ; the name decides
    assert [peak_flops("cuda", name=f"NVIDIA {n}") for n in ("H100 80GB HBM3", "H100 PCIe", "H100 NVL", "H200")] == \
        [989e12, 756e12, 835e12, 989e12]


# names as torch.cuda.get_device_name reports them -> the PEAK_FLOPS entry they must take
DEVICE_NAMES = [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA GH200 480GB", "GH200"),
    ("NVIDIA H800", "H800"), ("NVIDIA H20", "H20"), ("NVIDIA B200", "B200"), ("NVIDIA GB200", "GB200"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA A10", "A10"),
    ("NVIDIA A30", "A30"), ("NVIDIA A40", "A40"), ("NVIDIA L4", "L4"), ("NVIDIA L40", "L40"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA GeForce RTX 3090", "RTX 3090"),
    ("Tesla V100-SXM2-32GB", "V100"), ("Tesla V100-PCIE-16GB", "V100 PCIE"), ("Tesla V100S-PCIE-32GB", "V100S"),
    ("Tesla T4", "T4"), ("AMD Instinct MI300X", "MI300X"), ("AMD Instinct MI325X", "MI325X"),
    ("AMD Instinct MI250X/MI250", "MI250X"),
    # no entry: a part of a word is not the word (A10G is not an A10, H10 nothing), unknown cards
    ("NVIDIA A10G", None), ("NVIDIA H10", None), ("NVIDIA GeForce RTX 4080", None), ("NVIDIA L20", None),
]


@pytest.mark.parametrize("name, key", DEVICE_NAMES)
def test_peak_flops_match_whole_model_names(name, key):
    from metrics import PEAK_FLOPS, peak_key
    assert peak_key(name) == key
    assert peak_flops("cuda", name=name) == (None if key is None else PEAK_FLOPS[key])


def test_peak_flops_figures():
    # L40 is half an L40S, 1.5x an L4: taking one for another moves MFU by that much
    assert [peak_flops("cuda", name=f"NVIDIA {n}") for n in ("L4", "L40", "L40S", "B200", "GB200")] == \
        [121e12, 181e12, 362e12, 2250e12, 2500e12]


def test_vocab_padding_changes_shapes_not_results():
    """pad_vocab_to gives the table and head more rows, zero and unused: the same weights give the same
    logits and loss, the logits cover the real ids only, and training leaves the padding at zero."""
    plain, padded = small_model(), small_model(pad_vocab_to=64)
    assert padded.lm_head.weight.shape[0] == 128 and not padded.lm_head.weight[101:].any()
    padded.load_state_dict({k: hf.fit_rows(v, 128) if k in hf.VOCAB_ROWS else v for k, v in plain.state_dict().items()})
    x, y = torch.randint(101, (3, 32)), torch.randint(101, (3, 32))
    (a, loss_a), (b, loss_b) = plain(x, y), padded(x, y)
    assert b.shape == (3, 32, 101)
    torch.testing.assert_close(b, a)
    torch.testing.assert_close(loss_b, loss_a)  # ln(101) at init, not ln(128)
    padded.train()
    opt = padded.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    for _ in range(3):
        padded(x, y, return_logits=False)[1].backward()
        opt.step()
        opt.zero_grad()
    assert not padded.lm_head.weight[101:].any()
    with torch.no_grad():  # whatever the padding rows held, no padded id is ever sampled
        padded.lm_head.weight[101:] = 100.0
    out = padded.generate([[1, 2, 3]], 50, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert all(0 <= t < 101 for t in out[0])
    assert padded(x, y, return_logits=False)[0] is None


SWITCHES = [dict(rope=True), dict(norm="rmsnorm"), dict(qk_norm=True), dict(mlp="relu2"), dict(mlp="swiglu"),
            dict(tie_embeddings=False), dict(zero_init=True), dict(logit_softcap=15.0),
            dict(rope=True, norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False, zero_init=True,
                 logit_softcap=15.0)]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_every_switch_keeps_the_invariants(switches):
    vocab = 1000
    model = small_model(vocab_size=vocab, **switches)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(vocab, (4, 32), generator=g), torch.randint(vocab, (4, 32), generator=g)
    assert abs(model(x, y)[1].item() - math.log(vocab)) < 0.1  # loss at init
    x2 = x.clone()
    x2[:, 20:] = torch.randint(vocab, (4, 12), generator=g)  # the future does not change the past
    torch.testing.assert_close(model(x, y)[0][:, :20], model(x2, y)[0][:, :20])
    prompts = [[5, 7, 11, 13], [1], list(range(20, 40))]  # the cache equals recomputation, ragged rows too
    assert model.generate(prompts, 10, temperature=0) == model.generate(prompts, 10, temperature=0, use_cache=False)


def test_switch_parameter_counts():
    base = small_model().get_num_params()
    assert small_model(rope=True).get_num_params() == base - 32 * 64  # no position table
    assert small_model(tie_embeddings=False).get_num_params() == base + 101 * 64  # a head of its own
    assert abs(small_model(mlp="swiglu").get_num_params() - base) < 0.05 * base  # 8/3 x hidden: about the same
    with pytest.raises(ValueError, match="mlp='geglu'"):
        small_model(mlp="geglu")


def test_muon_orthogonalizes_and_trains():
    from muon import orthogonalize
    g = torch.randn(48, 16)
    s = torch.linalg.svdvals(orthogonalize(g))
    assert s.min() > 0.5 and s.max() < 1.3  # every singular value near 1
    model = small_model()
    model.train()
    opt = model.configure_optimizers(0.1, 3e-3, (0.9, 0.95), "cpu", optimizer="muon", muon_lr=0.02)
    # 2 blocks x 4 matrices; wte and wpe; 8 biases and gains per block + the final norm's 2
    assert [len(gr["params"]) for gr in opt.param_groups] == [8, 2, 18]
    x = torch.randint(101, (8, 32))
    losses = []
    for _ in range(30):
        _, loss = model(x, torch.roll(x, -1, 1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("kw", [{}, {"logit_softcap": 15.0, "pad_vocab_to": 64}])
def test_per_target_losses_equal_the_full_logits_at_the_scored_positions(kw):
    """HellaSwag's path: the head on the scored positions only gives each target's cross-entropy as
    the full (B, T, vocab) logits do (padding rows cut, softcap applied the same way)."""
    model = small_model(**kw).eval()
    x = torch.randint(model.config.vocab_size, (3, 12))
    y = torch.full((3, 12), -1)
    y[0, 8:], y[1, 3:5], y[2, 11] = 7, 2, 5
    with torch.no_grad():
        logits, _ = model(x, y)
        _, per = model(x, y, per_target=True)
    scored = y >= 0
    full = -torch.log_softmax(logits[scored].float(), dim=-1).gather(1, y[scored][:, None])[:, 0]
    assert per.shape == (int(scored.sum()),)
    torch.testing.assert_close(per, full, rtol=1e-5, atol=1e-6)

"""Generation's host syncs and its non-finite guard (generate.py).

On a GPU every read of a device value by the host waits for all queued work; the cache keeps what
decides shapes on the host, so a generated token costs one read. These tests count the reads a CPU
run makes through the Python-level ways to make one (a GPU's cudaStreamSynchronize inside a torch
kernel is not visible here, and none of the kernels generation calls makes one on CUDA either)."""

import pytest
import torch

from configurator import UserError
from generate import sample_next
from model import GPT, GPTConfig

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero")


def small_model(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=3, n_head=4, n_embd=64, block_size=32, vocab_size=101, **kw)).eval()


@pytest.fixture
def reads(monkeypatch):
    """A counter of the device->host reads that Python code makes on any tensor."""
    count = {"n": 0}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            count["n"] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return count


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=1.0, top_k=20, top_p=0.9)],
                         ids=["greedy", "sampled"])
@pytest.mark.parametrize("rope", [False, True])
def test_one_host_read_per_generated_token(reads, kw, rope):
    model = small_model(rope=rope)
    prompts = [[5, 7, 11, 13], [1], list(range(20, 40))]  # ragged rows, and 60 tokens cross block_size twice
    g = torch.Generator().manual_seed(0)
    out = model.generate(prompts, 60, generator=g, **kw)
    assert [len(o) for o in out] == [60, 60, 60]
    assert reads["n"] == 60  # not one per layer per token, and none for the refills past block_size


def test_the_stream_reads_once_per_token_and_stops_at_end_of_text(reads):
    model = small_model()
    first = model.generate([[1, 2, 3]], 1, temperature=0)[0][0]
    reads["n"] = 0
    steps = list(model.generate_stream([[1, 2, 3], [4, 5]], 20, temperature=0, eot_id=first))
    n = reads["n"]  # (before the checks below, which read the yielded CPU tensors themselves)
    assert n == len(steps) == 20 and all(s.device.type == "cpu" for s in steps)
    assert steps[0][0] == first and all(s[0] == -1 for s in steps[1:])  # the finished row yields -1


def test_cache_and_recomputation_agree_past_block_size():
    model = small_model()
    prompts = [[5, 7, 11, 13], [1], list(range(20, 40))]
    # greedy, so they take the same tokens; past block_size they see different contexts (the cache keeps
    # half, recomputation slides a window), so compare up to it: the longest row reaches 32 after 12
    assert model.generate(prompts, 12, temperature=0) == model.generate(prompts, 12, temperature=0, use_cache=False)


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=1.0), dict(temperature=0.8, top_k=5, top_p=0.5)],
                         ids=["greedy", "sampled", "top_k_top_p"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_non_finite_probabilities_are_one_line_error_not_a_multinomial_of_nan(monkeypatch, kw, use_cache):
    model = small_model()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0, 0] = float("nan")
    multinomial = torch.multinomial

    def checked(probs, *args, **kwargs):
        assert torch.isfinite(probs).all(), "multinomial got a NaN"  # on CUDA a device-side assert
        return multinomial(probs, *args, **kwargs)
    monkeypatch.setattr(torch, "multinomial", checked)
    with pytest.raises(UserError, match="not finite") as e:
        model.generate([[1, 2, 3], [4]], 5, use_cache=use_cache, generator=torch.Generator().manual_seed(0), **kw)
    assert "\n" not in str(e.value) and "generated token 1" in str(e.value)


def test_sample_next_refuses_non_finite_rows_and_keeps_minus_inf():
    ok = torch.tensor([[1.0, float("-inf"), 2.0]])  # a masked token is fine
    assert sample_next(ok, temperature=0).item() == 2
    for bad in (float("nan"), float("inf")):
        with pytest.raises(UserError, match="not finite"):
            sample_next(torch.tensor([[1.0, bad, 2.0]]), temperature=1.0, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UserError, match="temperature=1e-40"):  # logits / 1e-40 overflow
        sample_next(torch.tensor([[1.0, 3.0, 2.0]]), temperature=1e-40)


def test_a_stream_closed_early_restores_the_training_mode():
    model = small_model().train()
    steps = model.generate_stream([[1, 2, 3]], 10, temperature=0)
    next(steps)
    assert not model.training  # generating: eval mode (no dropout)
    steps.close()
    assert model.training


def test_a_non_finite_sample_at_an_eval_is_divergence_rolled_back_then_one_line(data_root, tmp_path, monkeypatch):
    """NaN that shows first in an eval's sample is treated as a bad eval: rolled back (with half the
    learning rate) and, when it keeps coming, the one-line stop; never a traceback from sampling."""
    import pytest

    import generate
    from configurator import UserError
    from conftest import read_metrics, tiny_train_config
    from train import train
    real, calls = generate.Generation._steps, []

    def broken_after_the_first(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # step 0's sample is fine: the first checkpoint is written
            yield from real(self, *args, **kwargs)
            return
        raise generate.non_finite_error(0.8, 1)
        yield
    monkeypatch.setattr(generate.Generation, "_steps", broken_after_the_first)
    with pytest.raises(UserError, match="training keeps failing"):
        train(tiny_train_config(data_root, tmp_path, max_iters=4, eval_interval=2, sample_tokens=5))
    assert any("rollback_from" in e for e in read_metrics(tmp_path))

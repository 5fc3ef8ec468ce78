import math

import pytest

from configurator import UserError
from model import GPT, GPTConfig
from plan import PlanConfig, flops_for_params, flops_for_tokens, gpt_params, optimal_for_flops, plan


def test_a_published_choice_320_pflops_gives_about_50m_parameters_and_1_1b_tokens():
    p = plan(PlanConfig(flops=3.2e17))
    assert 45e6 < p["params"] < 55e6 and 1.0e9 < p["tokens"] < 1.2e9
    assert any(s["n_embd"] == 512 and s["n_head"] == 8 for s in p["shapes"])  # the practitioner's width and heads
    assert p["flops"] == pytest.approx(6 * p["params"] * p["tokens"])


def test_budgets_in_params_tokens_and_hours_agree():
    n, d = optimal_for_flops(1e20)
    assert optimal_for_flops(flops_for_params(n))[0] == pytest.approx(n)
    assert optimal_for_flops(flops_for_tokens(d))[1] == pytest.approx(d)
    p = plan(PlanConfig(hours=2, tokens_per_sec=1e5, measured_params=1e8))
    assert p["flops"] == pytest.approx(6 * 1e8 * 1e5 * 7200) and p["hours"] == pytest.approx(2)
    assert p["steps"] == math.ceil(p["tokens"] / 524288)


@pytest.mark.parametrize("n_layer, n_embd", [(8, 512), (6, 256), (12, 768)])
def test_shape_parameter_counts_match_the_model(n_layer, n_embd):
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_embd // 64, n_embd=n_embd, vocab_size=50257, block_size=1024))
    assert gpt_params(n_layer, n_embd, 50257, 1024) == model.get_num_params()


def test_bad_budgets():
    with pytest.raises(UserError, match="exactly one of"):
        plan(PlanConfig(flops=1e18, tokens=1e9))
    with pytest.raises(UserError, match="--hours needs --tokens_per_sec"):
        plan(PlanConfig(hours=3))

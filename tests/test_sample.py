import io

import pytest

from configurator import UserError
from conftest import tiny_train_config
from sample import SampleConfig, encode_prompt, sample
from tokenizer import CharTokenizer
from train import train


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(tiny_train_config(data_root, out, max_iters=30, lr_decay_iters=30, eval_interval=15))
    return str(out)


def draw(**kw):
    out, msgs = io.StringIO(), []
    texts = sample(SampleConfig(device="cpu", **kw), out=out, info=msgs.append)
    return texts, out.getvalue(), msgs


def test_samples_stream_and_repeat_with_the_seed(run_dir):
    texts, printed, msgs = draw(out_dir=run_dir, start="ROMEO:", num_samples=2, max_new_tokens=40)
    assert len(texts) == 2 and all(t.startswith("ROMEO:") and len(t) <= 46 for t in texts)
    assert texts[0] in printed and texts[1] in printed
    assert "best.pt" in msgs[0] and "step 30" in msgs[0]  # says which checkpoint
    assert draw(out_dir=run_dir, start="ROMEO:", num_samples=2, max_new_tokens=40)[0] == texts
    assert draw(out_dir=run_dir, start="ROMEO:", num_samples=2, max_new_tokens=40, seed=7)[0] != texts


def test_cache_and_recompute_agree_and_greedy_is_deterministic(run_dir):
    kw = dict(out_dir=run_dir, start="First Citizen:", num_samples=1, max_new_tokens=15, temperature=0.0)
    assert draw(**kw)[0] == draw(kv_cache=False, **kw)[0]


def test_newest_run_under_a_folder_and_an_explicit_file(run_dir, tmp_path):
    import os
    import shutil
    shutil.copytree(run_dir, tmp_path / "out" / "a")
    os.utime(tmp_path / "out" / "a" / "best.pt")
    assert "out/a/best.pt" in draw(out_dir=str(tmp_path / "out"), max_new_tokens=1, num_samples=1)[2][0]
    path = os.path.join(run_dir, "ckpt.pt")
    assert path in draw(out_dir=path, max_new_tokens=1, num_samples=1)[2][0]


def test_prompt_from_file_empty_prompt_and_long_prompt(run_dir, tmp_path):
    p = tmp_path / "prompt.txt"
    p.write_text("KING:")
    assert draw(out_dir=run_dir, start=f"FILE:{p}", num_samples=1, max_new_tokens=5)[0][0].startswith("KING:")
    texts, _, _ = draw(out_dir=run_dir, start="", num_samples=1, max_new_tokens=5)  # from end-of-text
    assert 0 < len(texts[0]) <= 5
    texts, _, msgs = draw(out_dir=run_dir, start="a" * 100, num_samples=1, max_new_tokens=3)
    assert any("keeping the last 32" in m for m in msgs)
    with pytest.raises(UserError, match="prompt file .*missing.txt not found"):
        draw(out_dir=run_dir, start=f"FILE:{tmp_path}/missing.txt")


def test_encode_prompt_crops_from_the_left():
    t = CharTokenizer("abc")
    warnings = []
    assert encode_prompt(t, "abcabc", 4, warn=warnings.append) == t.encode("cabc") and warnings
    assert encode_prompt(t, "", 4) == [t.eot_id]


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint .* under"):
        draw(out_dir=str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        draw(out_dir=str(tmp_path / "nope"))


def test_character_outside_the_vocabulary(run_dir):
    with pytest.raises(UserError, match="not in this char tokenizer's vocabulary"):
        draw(out_dir=run_dir, start="日本")

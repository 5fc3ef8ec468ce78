import io
import os
import subprocess
import sys

import pytest

from configurator import UserError, parse_args
from conftest import ROOT, tiny_train_config
from sample import Continuation, SampleConfig, encode_prompt, sample, unescape
from tokenizer import CharTokenizer
from train import train


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(tiny_train_config(data_root, out, max_iters=30, lr_decay_iters=30, eval_interval=15))
    return str(out)


def draw(inp=None, **kw):
    out, msgs = io.StringIO(), []
    texts = sample(SampleConfig(device="cpu", **kw), out=out, info=msgs.append, inp=inp)
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
    assert draw(**kw)[0] == draw(no_kv_cache=True, **kw)[0]


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


def test_empty_prompt_file_starts_from_end_of_text(run_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    texts, printed, _ = draw(out_dir=run_dir, start=f"FILE:{tmp_path}/empty.txt", num_samples=1, max_new_tokens=5)
    assert 0 < len(texts[0]) <= 5 and "<|endoftext|>" not in printed


def test_stop_strings_cut_the_sample_before_them(run_dir):
    kw = dict(out_dir=run_dir, start="ROMEO:", max_new_tokens=40, temperature=0.0)
    full = draw(num_samples=1, **kw)[0][0][len("ROMEO:"):]
    stop = full[12:15]  # greedy decoding makes the same text with or without a stop string
    cut = "ROMEO:" + full[:full.index(stop)]
    texts, printed, _ = draw(num_samples=1, stop=[stop, "never seen"], **kw)
    assert texts == [cut] and printed == cut + "\n"  # streamed, and no piece of the stop string leaked
    texts, printed, _ = draw(num_samples=2, stop=[stop], **kw)  # a batch: each sample printed once complete
    assert texts == [cut, cut] and printed.count(cut + "\n") == 2


def test_continuation_decodes_across_tokens_and_holds_back_a_possible_stop():
    row = Continuation(["END", "\n\n"])
    row.add("é".encode()[:1])  # half a character: nothing to print yet
    assert row.take() == ""
    row.add("é".encode()[1:] + b"ab\nE")
    assert row.take() == "éab\n"  # "E" could start a stop string
    row.add(b"Nxx")
    assert row.take() == "ENxx" and not row.done
    row.add(b"y\n")
    row.add(b"\nzzz")
    assert row.done and row.text == "éab\nENxxy" and row.take() == "y"


def test_sampling_flags_parse():
    cfg = parse_args(SampleConfig, ["--no_kv_cache", "--stop", "\\n\\n", "THE END", "--num_samples", "4"])
    assert cfg.no_kv_cache and cfg.stop == ["\\n\\n", "THE END"] and cfg.num_samples == 4
    assert unescape(cfg.stop[0]) == "\n\n" and unescape("né\\t") == "né\t"


def test_batched_samples_are_reproducible_and_distinct(run_dir):
    texts, printed, _ = draw(out_dir=run_dir, start="A", num_samples=3, max_new_tokens=20, temperature=1.0)
    assert len(set(texts)) == 3 and printed.count("-" * 40) == 2 and all(t in printed for t in texts)
    assert draw(out_dir=run_dir, start="A", num_samples=3, max_new_tokens=20, temperature=1.0)[0] == texts


def test_interactive_reads_prompts_until_end_of_input(run_dir):
    texts, printed, _ = draw(inp=io.StringIO("ROMEO:\nJULIET:\n"), out_dir=run_dir, interactive=True, num_samples=2,
                             max_new_tokens=5)
    assert len(texts) == 4 and texts[2].startswith("JULIET:") and texts[3].startswith("JULIET:")

    class CtrlC(io.StringIO):
        def readline(self, *a):
            raise KeyboardInterrupt
    assert draw(inp=CtrlC(), out_dir=run_dir, interactive=True)[0] == []  # Ctrl-C: a clean end
    with pytest.raises(UserError, match="leave out --start"):
        draw(inp=io.StringIO(""), out_dir=run_dir, interactive=True, start="x")


def test_interactive_command_line(run_dir):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), "--out_dir", run_dir, "--interactive",
                        "--num_samples=1", "--max_new_tokens=5", "--device=cpu"], input="KING:\nQUEEN:\n\nEND:\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.startswith("KING:") and r.stdout.count("END:") == 1, r.stdout  # empty line: from end-of-text
    assert "error: character 'Q' is not in" in r.stderr  # a bad prompt does not end the session


def test_bench_sample_prints_json(capsys):
    import json
    from bench import main
    main(["sample", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=32", "--vocab_size=50",
          "--prompt_tokens=8", "--new_tokens=4", "--repeats=2", "--device=cpu"])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert len(result["cache"]["runs"]) == 2 and len(result["recompute"]["runs"]) == 1 and result["speedup"] > 0
    assert "KV cache" in captured.err and "x faster" in captured.err
    with pytest.raises(UserError, match="unknown command 'trian'"):
        main(["trian"])

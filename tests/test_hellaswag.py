"""HellaSwag: lm-eval's preprocessing and metrics on examples written for the tests
(tests/data/hellaswag_tiny.jsonl, the original format), for every tokenizer, from a checkpoint, an
export and during training; offline and bad input are one-line errors."""

import json
import math
import os
import types

import pytest
import torch

import checkpoint
import hellaswag
from conftest import ROOT, assert_one_line_error, read_metrics, run_main, tiny_train_config
from eval import EvalConfig, evaluate, main
from model import GPT, GPTConfig
from tokenizer import BPETokenizer, CharTokenizer, GPT2Tokenizer
from train import train

TINY = os.path.join(ROOT, "tests", "data", "hellaswag_tiny.jsonl")


def docs():
    return hellaswag.read_jsonl(TINY)


def all_text(docs):
    return "".join(hellaswag.render(d)[0] + " " + " ".join(hellaswag.render(d)[1]) for d in docs)


def tokenizers():
    text = all_text(docs())
    return {"char": CharTokenizer.from_texts([text]), "gpt2": GPT2Tokenizer(),
            "bpe": BPETokenizer.train([text] * 20, 300)}


def tiny_gpt(vocab_size, block_size=128, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=block_size, vocab_size=vocab_size)).eval()


def run_eval(**kw):
    return evaluate(EvalConfig(device="cpu", task="hellaswag", task_file=TINY, **kw), info=lambda m: None)


def test_text_is_preprocessed_as_lm_eval_does():
    # ActivityNet: the activity label leads, ctx_b is capitalized; WikiHow: [title] ends a sentence,
    # other tags go, and the double spaces that leaves are halved once (so some stay, as in lm-eval)
    context, endings, label = hellaswag.render(docs()[0])
    assert context == "Making a sandwich: A woman lays two slices of bread on a board. She" and label == 0
    context, endings, label = hellaswag.render(docs()[2])
    assert context == "Home and Garden: How to water a plant. Check the soil. Push a finger into the soil near the stem."
    assert endings[0] == " If the car is red, sell it to a friend."
    assert endings[1] == "If the top inch feels dry, the plant needs water. . Pour slowly." and label == 1
    assert hellaswag.render(docs()[4])[0].endswith("neck.  Let the wide end hang lower.")
    hub_doc = {**docs()[1], "label": "2"}  # the Hub's copy has string labels
    assert hellaswag.render(hub_doc) == hellaswag.render(docs()[1])


class Oracle(torch.nn.Module):
    """A 'model' that knows the right endings: after a prefix of context + right ending it puts almost
    all probability on that text's next token, and is uniform everywhere else."""

    def __init__(self, right, vocab_size, block_size):
        super().__init__()
        self.right, self.vocab_size = right, vocab_size
        self.config = types.SimpleNamespace(block_size=block_size)

    def forward(self, idx, targets=None, per_target=False):
        logits = torch.zeros(*idx.shape, self.vocab_size)
        for b, row in enumerate(idx.tolist()):
            for seq in self.right:
                for t in range(min(len(row), len(seq) - 1)):
                    if row[t] != seq[t]:
                        break
                    logits[b, t, seq[t + 1]] = 30.0
        if per_target:  # as GPT.forward: the cross-entropy of each scored target
            scored = targets >= 0
            return None, torch.nn.functional.cross_entropy(logits[scored], targets[scored], reduction="none")
        return logits, None


@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
def test_a_model_that_prefers_the_right_endings_scores_100_percent(kind):
    tok = tokenizers()[kind]
    examples, skipped = hellaswag.encode(docs(), tok)
    assert skipped == 0 and len(examples) == 6
    right = [ex.rows[ex.label][0] + ex.rows[ex.label][1] for ex in examples]
    oracle = Oracle(right, tok.vocab_size, block_size=256)
    for batch_size in (1, 3, 8):  # batches cut across examples and pad rows of different lengths
        result = hellaswag.score(oracle, examples, batch_size, torch.no_grad(), "cpu")
        assert result == {"examples": 6, "acc": 1.0, "acc_norm": 1.0, "acc_norm_tokens": 1.0, "truncated": 0}


def test_acc_norm_by_hand_on_two_examples(tmp_path):
    # a GPT with zero weights predicts uniformly: every token costs log(V). With characters, " " + an
    # ending of n characters is n + 1 tokens, so ll = -(n + 1) log V: acc picks the shortest ending,
    # acc_norm (per character, lm-eval's) the longest, since (n + 1) / n falls with n
    two = [{"activity_label": "Test", "ctx_a": "A cat sees a ball.", "ctx_b": "it", "label": 2,
            "endings": ["runs.", "rolls it away.", "chases the ball across the floor.", "naps."]},
           {"activity_label": "Test", "ctx_a": "A man opens a book.", "ctx_b": "he", "label": 0,
            "endings": ["reads the first page slowly and smiles.", "sighs.", "reads it.", "puts it down."]}]
    path = tmp_path / "two.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in two))
    tok = CharTokenizer.from_texts([all_text(two)])
    model = tiny_gpt(tok.vocab_size)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    examples, _ = hellaswag.encode(hellaswag.load_docs("hellaswag", str(path)), tok)
    lls = hellaswag.loglikelihoods(model, examples[0].rows, torch.no_grad(), "cpu")
    assert lls == pytest.approx([-(len(e) + 1) * math.log(tok.vocab_size) for e in two[0]["endings"]], rel=1e-5)
    result = hellaswag.score(model, examples, 4, torch.no_grad(), "cpu")
    # by hand: example 1 acc picks "runs." (index 0), acc_norm index 2; example 2: "sighs." (1) and 0
    assert result["acc"] == 0.0 and result["acc_norm"] == 1.0


def test_a_checkpoint_and_its_export_score_the_same(tmp_path):
    import hf
    transformers = pytest.importorskip("transformers")
    tok = GPT2Tokenizer()
    model = tiny_gpt(tok.vocab_size, block_size=24)  # some contexts are longer: cut from the left
    args = {**vars(model.config)}
    checkpoint.save({"model": model.state_dict(), "model_args": args, "tokenizer": tok.meta(), "config": {},
                     "iter_num": 0, "best_val_loss": float("inf")}, str(tmp_path / "best.pt"))
    hf.export_hf(model, tok.meta(), str(tmp_path / "hf"))
    ours, exported = run_eval(out_dir=str(tmp_path / "best.pt")), run_eval(out_dir=str(tmp_path / "hf"), batch_size=3)
    assert ours["examples"] == 6 and ours["truncated"] > 0
    for key in ("acc", "acc_norm", "acc_norm_tokens", "examples", "truncated"):
        assert ours[key] == exported[key]
    # and lm-eval's recipe on the exported directory with transformers' own model and tokenizer: encode
    # context + continuation whole, split at the context's token count, keep the last n_positions + 1
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    examples, _ = hellaswag.encode(docs(), tok)
    for doc, ex in zip(docs(), examples):
        context, endings, _ = hellaswag.render(doc)
        expected = []
        for e in endings:
            whole, ctx = hf_tok(context + " " + e)["input_ids"], hf_tok(context)["input_ids"]
            inp = whole[-25:]
            n = len(whole) - len(ctx)
            with torch.no_grad():
                logp = torch.log_softmax(hf_model(torch.tensor([inp[:-1]])).logits[0], -1)
            expected.append(sum(logp[len(inp) - 1 - n + j, t].item() for j, t in enumerate(inp[-n:])))
        assert hellaswag.loglikelihoods(model, ex.rows, torch.no_grad(), "cpu") == pytest.approx(expected, abs=1e-4)


def test_a_character_model_skips_examples_with_characters_it_never_saw(tmp_path):
    text = all_text(docs())
    tok = CharTokenizer.from_texts([text.replace("(", "")])  # only example 6 has a "("
    examples, skipped = hellaswag.encode(docs(), tok)
    assert len(examples) == 5 and skipped == 1
    with pytest.raises(hellaswag.UserError, match="cannot encode any of the 6 examples"):
        hellaswag.encode(docs(), CharTokenizer.from_texts(["abc"]))


def test_command_line_prints_one_json_line(tmp_path, capsys, monkeypatch):
    import metrics
    monkeypatch.setattr(metrics.Progress, "INTERVAL", 0.0)  # stderr is no terminal: a progress line per batch
    tok = GPT2Tokenizer()
    model = tiny_gpt(tok.vocab_size)
    checkpoint.save({"model": model.state_dict(), "model_args": {**vars(model.config)}, "tokenizer": tok.meta(),
                     "config": {}, "iter_num": 3, "best_val_loss": 2.5}, str(tmp_path / "best.pt"))
    code, out, err = run_main(main, ["--out_dir", str(tmp_path), "--task", "hellaswag", "--task_file", TINY,
                                     "--limit", "4", "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads(out)  # stdout is the JSON line alone
    assert result["task"] == "hellaswag" and result["examples"] == 4 and result["skipped"] == 0
    assert 0 <= result["acc_norm"] <= 1 and "hellaswag: acc_norm" in err
    assert "hellaswag: 4 of 4 examples (100%)" in err and "\r" not in err


def test_mistakes_and_offline_are_one_line_errors(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    for lines, fragments in ((["{not json"], ["line 1 is not JSON"]),
                             ([json.dumps({**docs()[0], "label": None})], ["line 1", "no label", "val split"]),
                             ([json.dumps({**docs()[0], "endings": ["a"]})], ["4 endings"])):
        bad.write_text("\n".join(lines) + "\n")
        code, _, err = run_main(main, ["--task", "hellaswag", "--task_file", str(bad)], capsys)
        assert_one_line_error(code, err, *fragments)
    for argv, fragments in ((["--task", "hellaswag", "--task_file", str(tmp_path / "nope.jsonl")],
                             ["nope.jsonl not found", hellaswag.VAL_URL]),
                            (["--task", "mmlu"], ["task 'mmlu'", "hellaswag"]),
                            (["--task", "hellaswag", "--task_file", TINY, "--limit", "-1"], ["limit=-1"])):
        code, _, err = run_main(main, argv, capsys)
        assert_one_line_error(code, err, *fragments)
    datasets = pytest.importorskip("datasets")

    def unreachable(name):
        raise hellaswag.UserError("cannot reach the Hugging Face Hub")

    def no_network(*a, **k):
        raise ConnectionError("no network")
    monkeypatch.setattr(hellaswag.sources, "check_hub_reachable", unreachable)
    code, _, err = run_main(main, ["--task", "hellaswag"], capsys)
    assert_one_line_error(code, err, "Rowan/hellaswag", "cannot be reached", hellaswag.VAL_URL, "--task_file")
    monkeypatch.setattr(hellaswag.sources, "check_hub_reachable", lambda name: None)
    monkeypatch.setattr(datasets, "load_dataset", no_network)  # reachable, but the download fails
    code, _, err = run_main(main, ["--task", "hellaswag"], capsys)
    assert_one_line_error(code, err, "Rowan/hellaswag", "ConnectionError", hellaswag.VAL_URL, "--task_file")


def test_training_logs_the_task_at_every_eval(data_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_train_config(data_root, out, dataset="tiny_gpt2", max_iters=4, eval_interval=2, eval_tasks="hellaswag",
                            eval_tasks_file=TINY, eval_tasks_examples=4))
    evals = [e for e in read_metrics(out) if "val_loss" in e]
    assert [e["iter"] for e in evals] == [0, 2, 4]
    assert all(e["hellaswag_acc_norm"] in (0, 0.25, 0.5, 0.75, 1) and "hellaswag_acc" in e for e in evals)
    # the last eval's figure is what eval.py gives for the checkpoint written at that step
    result = run_eval(out_dir=str(out / "ckpt.pt"), limit=4)
    assert (result["acc"], result["acc_norm"]) == (evals[-1]["hellaswag_acc"], evals[-1]["hellaswag_acc_norm"])

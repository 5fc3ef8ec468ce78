"""
HellaSwag (Zellers et al. 2019, https://arxiv.org/abs/1905.07830), the downstream benchmark GPT-2
reproductions report: for each example, which of four endings does the model find most likely after
the context? Scored zero-shot exactly as lm-evaluation-harness's `hellaswag` task does it, so the
numbers compare with published ones (docs/design.md, "Downstream evaluation", has the definitions).

    python eval.py --task hellaswag --out_dir out/run                      # 10,042 validation examples
    python eval.py --task hellaswag --task_file hellaswag_val.jsonl --limit 1000
    python train.py ... --eval_tasks=hellaswag --eval_tasks_examples=500    # at every eval

Per example and ending, ll = the summed log-probability of " " + ending given the context;
  acc              argmax of ll                         (lm-eval's acc)
  acc_norm         argmax of ll / characters of ending  (lm-eval's acc_norm)
  acc_norm_tokens  argmax of ll / tokens of ending      (llm.c's normalization)
"""

import math
import os
import re
from dataclasses import dataclass

import torch

import sources
import validate
from configurator import UserError
from metrics import Progress

TASKS = ("hellaswag",)
HUB_DATASET = "Rowan/hellaswag"  # what lm-eval loads; its validation split is the original val file
VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
KEYS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")


def preprocess(text):
    """lm-evaluation-harness's clean-up of HellaSwag text: the WikiHow half carries bracketed tags
    ([title], [step], [header] ...); a title tag becomes a sentence break, the others go, and the
    double spaces that leaves are halved."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def render(doc):
    """(context, endings, label) of an example in the original format, as lm-eval builds them: the
    activity label leads the context, and ctx_b (the start of the sentence to finish) is capitalized."""
    context = preprocess(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
    return context, [preprocess(e) for e in doc["endings"]], int(doc["label"])


def read_jsonl(path):
    """The examples of a HellaSwag .jsonl (the original release's format, one example a line)."""
    if not os.path.isfile(path):
        raise UserError(f"task file {path} not found: expected HellaSwag's hellaswag_val.jsonl ({VAL_URL})")
    docs = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            doc = validate.parse_json(raw, f"{path} line {n}", "expected one HellaSwag example a line "
                                                               "(hellaswag_val.jsonl)")
            check_doc(doc, f"{path} line {n}")
            docs.append(doc)
    return docs


def check_doc(doc, where):
    """One example, checked field by field: the context parts text, four non-empty text endings, a label
    0-3 (an int, or the Hub's string): anything else would be scored as something it is not."""
    missing = [k for k in KEYS if not isinstance(doc, dict) or doc.get(k) is None]
    if missing:
        raise UserError(f"{where} is not a labelled HellaSwag example: it has no {', '.join(missing)} (expected "
                        f"the keys {', '.join(KEYS)}; the test split has no labels, use the val split)")
    f = validate.Fields(doc, where, "expected a HellaSwag example (ctx_a, ctx_b, activity_label text, 4 endings, "
                                    "label 0-3)")
    for key in ("activity_label", "ctx_a", "ctx_b"):
        f.str(key)
    f.list("endings", length=4, item=lambda e: None if isinstance(e, str) and e.strip() else "is not non-empty text")
    label = doc["label"]
    if isinstance(label, bool) or not (isinstance(label, int) and 0 <= label <= 3 or
                                       isinstance(label, str) and label.strip() in ("0", "1", "2", "3")):
        f.fail("label", "is not 0, 1, 2 or 3", label)


def read_hub():
    """The validation split from the Hugging Face Hub (cached by datasets after the first time)."""
    try:
        sources.check_hub_reachable(HUB_DATASET)  # in seconds, not after datasets' retries
        import datasets
        docs = [dict(d) for d in datasets.load_dataset(HUB_DATASET, split="validation")]
    except Exception as e:  # no network, no datasets, no cache: all mean "get the file yourself"
        why = "the Hub cannot be reached" if isinstance(e, UserError) else type(e).__name__
        raise UserError(f"cannot load {HUB_DATASET} from the Hugging Face Hub ({why}): download hellaswag_val.jsonl "
                        f"from {VAL_URL} and pass its path as --task_file (train.py: --eval_tasks_file), or set "
                        f"HF_HUB_OFFLINE=1 to use a copy already in your Hugging Face cache") from None
    for i, doc in enumerate(docs):
        check_doc(doc, f"{HUB_DATASET} validation example {i}")
    return docs


def load_docs(task, task_file="", limit=0):
    """The task's examples: from task_file when given, else from the Hub; the first `limit` (0: all)."""
    if task not in TASKS:
        raise UserError(f"task {task!r}: the tasks are {', '.join(TASKS)}")
    if limit < 0:
        raise UserError(f"limit={limit}: the number of examples must be at least 0 (0: all)")
    docs = read_jsonl(task_file) if task_file else read_hub()
    return docs[:limit] if limit else docs


@dataclass
class Example:
    rows: list  # four (context ids, continuation ids)
    chars: list  # the characters of each ending (acc_norm's divisor)
    label: int


def encode(docs, tokenizer):
    """(examples, skipped): each doc as token ids, as lm-eval encodes a (context, continuation) pair:
    the whole text is encoded and the context's token count splits it, so a BPE merge across the
    space is tokenized as it would be in running text. A doc the tokenizer cannot encode (a
    character-level model meets a character it never saw) is skipped and counted."""
    examples, skipped = [], 0
    for doc in docs:
        context, endings, label = render(doc)
        try:
            ctx = tokenizer.encode(context)
            rows = [(ctx, tokenizer.encode(context + " " + e)[len(ctx):]) for e in endings]
        except UserError:
            skipped += 1
            continue
        examples.append(Example(rows, [len(e) for e in endings], label))
    if not examples:
        raise UserError(f"the {tokenizer.kind} tokenizer cannot encode any of the {skipped} examples: a "
                        f"character-level model knows only the characters of its training text")
    return examples, skipped


@torch.no_grad()
def loglikelihoods(model, rows, ctx, device):
    """Summed log-probability of each row's continuation given its context, in one forward pass of
    the batch (right-padded: the causal mask keeps padding out of the real positions). A row longer
    than the model's context + 1 loses tokens from the left, as in lm-eval."""
    block_size = model.config.block_size
    seqs = [(c + e)[-(block_size + 1):] for c, e in rows]
    T = max(len(s) for s in seqs) - 1
    x = torch.zeros(len(rows), T, dtype=torch.long)
    y = torch.full((len(rows), T), -1, dtype=torch.long)  # -1: not scored
    for r, (s, (_, e)) in enumerate(zip(seqs, rows)):
        n = min(len(e), len(s) - 1)  # the continuation's targets: the last n
        x[r, :len(s) - 1] = torch.tensor(s[:-1])
        y[r, len(s) - 1 - n:len(s) - 1] = torch.tensor(s[len(s) - n:])
    x, y = x.to(device), y.to(device)
    with ctx:  # the head on the scored positions only (the endings, a few tokens of each row)
        logp = -model(x, y, per_target=True)[1]
    scored = y >= 0
    rows_of = torch.arange(len(rows), device=device)[:, None].expand_as(y)[scored]
    return torch.zeros(len(rows), device=device).index_add_(0, rows_of, logp).tolist()


def argmax(xs):
    return max(range(len(xs)), key=lambda i: xs[i])  # the first of equal maxima, as numpy's


def score(model, examples, batch_size, ctx, device, progress=False):
    """acc, acc_norm and acc_norm_tokens of the model over the examples; batch_size: sequences per
    forward pass (an example is four). The model is in eval mode meanwhile. truncated: the examples
    whose context had to lose tokens from the left to fit the model's context."""
    was_training = model.training
    model.eval()
    rows = [row for ex in examples for row in ex.rows]
    lls = []
    with Progress(len(examples), "hellaswag", "examples", enabled=progress) as bar:  # a bar, or a line every 30 s
        for i in range(0, len(rows), batch_size):
            lls += loglikelihoods(model, rows[i:i + batch_size], ctx, device)
            bar.update(len(lls) // 4 - bar.n)
    model.train(was_training)
    if any(math.isnan(v) for v in lls):
        from faults import Diverged
        raise Diverged("the model's log-likelihoods of the task's endings are NaN: its outputs are not finite")
    hits = {"acc": 0, "acc_norm": 0, "acc_norm_tokens": 0}
    for k, ex in enumerate(examples):
        ll = lls[4 * k:4 * k + 4]
        per_char = [v / n if n else float("-inf") for v, n in zip(ll, ex.chars)]
        per_token = [v / len(e) for v, (_, e) in zip(ll, ex.rows)]
        for name, values in (("acc", ll), ("acc_norm", per_char), ("acc_norm_tokens", per_token)):
            hits[name] += argmax(values) == ex.label
    n, fits = len(examples), model.config.block_size + 1
    truncated = sum(any(len(c) + len(e) > fits for c, e in ex.rows) for ex in examples)
    return {"examples": n, **{name: h / n for name, h in hits.items()}, "truncated": truncated}

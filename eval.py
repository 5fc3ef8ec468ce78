"""
Score a trained model on every token of a dataset split: loss, perplexity and bits per byte.

    python eval.py --out_dir out/shakespeare_char               # its val split, as trained on
    python eval.py --out_dir out/run --split train --stride 512  # more context per token, slower
    python eval.py --out_dir gpt2-hf --dataset tinystories       # a Hugging Face GPT-2 directory
    python eval.py --out_dir out/run --task hellaswag            # a downstream task instead (hellaswag.py)

stdout is exactly one JSON line (for scripts); the readable summary goes to stderr.

Every token of the split but the first of each shard is predicted once, from the tokens before it
in windows of block_size: with stride = block_size (the default) the windows do not overlap, the
loss train.py reports at evals; a smaller stride slides the window so that every token after the
first window sees at least block_size - stride tokens of context, for block_size / stride times the
compute. Bits per byte divide the total loss by the UTF-8 bytes of the predicted text (end-of-text
counts 0 bytes), so models with different tokenizers compare on the same footing.
"""

import json
import math
import sys
from dataclasses import dataclass
from itertools import groupby

if __name__ == "__main__":  # Ctrl-C while torch loads exits quietly; run() gives it back its usual meaning
    __import__("configurator").quiet_interrupts()
import numpy as np
import torch

import hellaswag
from configurator import UserError, parse_args, run
from dataloader import dataset_dir
from devices import inference_device
from loading import describe, load_model
from metrics import Progress
from shards import check_tokens, open_shard, read_meta, shard_paths
from tokenizer import same_tokenizer


@dataclass
class EvalConfig:
    """Score a model on a whole dataset split: loss, perplexity and bits per byte."""
    out_dir: str = "out"  # a run folder, a checkpoint file, a folder whose newest run is used, or a Hugging Face GPT-2 directory
    split: str = "val"  # the split to score: val or train
    dataset: str = ""  # a prepared dataset (a name under data_root, or a path); empty: the one the model was trained on
    data_root: str = ""  # where prepared datasets live; empty: the training run's (else data)
    stride: int = 0  # new tokens scored per window: 0 means block_size (windows do not overlap); less: more context, slower
    batch_size: int = 8  # windows per forward pass
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps
    dtype: str = "auto"  # auto (bfloat16 where the GPU has it, float32 on CPU), float32, bfloat16, float16
    task: str = ""  # score a downstream task instead of the loss: hellaswag (its validation split, as lm-evaluation-harness does)
    task_file: str = ""  # the task's examples as a local .jsonl (HellaSwag's hellaswag_val.jsonl); empty: from the Hugging Face Hub
    limit: int = 0  # score only the task's first this many examples (0: all)


def windows(n, block_size, stride):
    """(start, length, skip) triples that score each target of a stream of n tokens (tokens 1..n-1)
    once: a window feeds tokens[start:start+length] and predicts tokens[start+1:start+length+1], of
    which the first `skip` were scored by an earlier window. The first window scores block_size
    targets, each later one `stride` more, with as much context before them as fits."""
    scored = 0  # targets 1..scored are done
    while scored < n - 1:
        end = min(scored + (stride if scored else block_size), n - 1)  # this window's last target
        start = max(0, end - block_size)
        yield start, end - start, scored - start
        scored = end


@torch.no_grad()
def score(model, tokens, block_size, stride, batch_size, ctx, device, token_bytes, progress=None):
    """(total loss in nats, targets, their bytes) over one token stream; token_bytes[i] is the
    number of bytes token i decodes to. progress(n) is told of every n targets scored."""
    total, count, n_bytes = 0.0, 0, 0
    # windows of one length batch together; in a stream only the first and last can be shorter
    for length, group in groupby(windows(len(tokens), block_size, stride), key=lambda w: w[1]):
        group = list(group)
        for i in range(0, len(group), batch_size):
            rows = group[i:i + batch_size]
            w = torch.from_numpy(np.stack([tokens[s:s + length + 1] for s, _, _ in rows]).astype(np.int64))
            x, y = w[:, :-1].to(device), w[:, 1:].clone()
            for r, (_, _, skip) in enumerate(rows):
                y[r, :skip] = -1  # scored by an earlier window: ignored (cross_entropy's ignore_index)
            n = int((y >= 0).sum())
            with ctx:
                _, loss = model(x, y.to(device), return_logits=False)  # the mean over the n targets; no logits kept
            total += loss.item() * n
            count += n
            if progress:
                progress(n)
            n_bytes += int(token_bytes[y[y >= 0]].sum())
    return total, count, n_bytes


def evaluate(cfg, info=None):
    """Score the model cfg.out_dir points to on the whole split; returns the result dict."""
    info = info or (lambda msg: print(msg, file=sys.stderr))
    if cfg.batch_size < 1 or cfg.stride < 0:
        raise UserError("batch_size must be at least 1 and stride at least 0")
    if cfg.split not in ("train", "val"):  # a name, never a pattern: '*' would score both splits as one
        raise UserError(f"split={cfg.split!r}: there are no {cfg.split} shards; a split is a name, train or val, "
                        f"not a pattern")
    device, ctx = inference_device(cfg.device, cfg.dtype)
    if cfg.task:
        return evaluate_task(cfg, device, ctx, info)
    model, tokenizer, path, meta = load_model(cfg.out_dir, device, rows=cfg.batch_size, positions=None,
                                              what=f"scoring with --batch_size={cfg.batch_size}")
    trained = meta["config"] or {}  # None for a Hugging Face directory
    dataset = cfg.dataset or trained.get("dataset")
    if not dataset or not isinstance(dataset, str):  # not saved, or a mix of several
        raise UserError(f"{path} does not name the one dataset it was trained on: pass --dataset")
    data_dir = dataset_dir(dataset, cfg.data_root or trained.get("data_root", "data"))
    data_tokenizer = read_meta(data_dir)["tokenizer"]
    if not same_tokenizer(data_tokenizer, meta["tokenizer"]):
        a, b = data_tokenizer, meta["tokenizer"]
        raise UserError(f"dataset {data_dir} uses tokenizer {a['kind']} (vocab {a['vocab_size']}), but the model "
                        f"uses {b['kind']} (vocab {b['vocab_size']}): evaluate on data prepared with the model's "
                        f"tokenizer")
    paths = shard_paths(data_dir, cfg.split)
    if not paths:
        raise UserError(f"no {cfg.split} shards in {data_dir}: expected a split prepare.py wrote (train or val)")
    block_size = model.config.block_size
    stride = min(cfg.stride or block_size, block_size)
    info(f"scoring {describe(path, meta)} on every token of {data_dir} {cfg.split}, "
         f"windows of {block_size} at stride {stride}")
    # the bytes each token decodes to; end-of-text is a boundary, not text
    token_bytes = torch.tensor([len(tokenizer.token_bytes([i])) for i in range(tokenizer.vocab_size)])
    token_bytes[tokenizer.eot_id] = 0
    nats, targets, n_bytes = 0.0, 0, 0
    for p in paths:  # every token id, before the first forward: none past the vocabulary reaches the model
        check_tokens(p, tokenizer.vocab_size, sample=None, whose="the model's")
    shards = [open_shard(p) for p in paths]
    # a large split takes minutes: a bar on a terminal (stderr), else a plain line every 30 s or so
    with Progress(sum(max(len(s) - 1, 0) for s in shards), f"scoring {cfg.split}", "tokens", unit_scale=True) as bar:
        for tokens in shards:
            totals = score(model, tokens, block_size, stride, cfg.batch_size, ctx, device, token_bytes, bar.update)
            nats, targets, n_bytes = nats + totals[0], targets + totals[1], n_bytes + totals[2]
    if targets == 0:
        raise UserError(f"the {cfg.split} split of {data_dir} has no token to predict")
    loss = nats / targets
    result = {"model": path, "dataset": data_dir, "split": cfg.split, "tokens": targets, "bytes": n_bytes,
              "loss": loss, "perplexity": math.exp(min(loss, 700)),
              "bits_per_byte": nats / math.log(2) / n_bytes if n_bytes else None,
              "block_size": block_size, "stride": stride}
    bpb = f"{result['bits_per_byte']:.4f}" if n_bytes else "n/a"
    info(f"{cfg.split}: loss {loss:.4f}, perplexity {result['perplexity']:.2f}, {bpb} bits per byte "
         f"({targets:,} tokens, {n_bytes:,} bytes)")
    return result


def evaluate_task(cfg, device, ctx, info):
    """Score the model on a downstream task (hellaswag.py); returns the result dict."""
    docs = hellaswag.load_docs(cfg.task, cfg.task_file, cfg.limit)  # first: a missing file fails before the model loads
    model, tokenizer, path, meta = load_model(cfg.out_dir, device, rows=cfg.batch_size, positions=None,
                                              what=f"scoring with --batch_size={cfg.batch_size}")
    info(f"scoring {describe(path, meta)} on {len(docs):,} {cfg.task} examples from {cfg.task_file or hellaswag.HUB_DATASET}")
    examples, skipped = hellaswag.encode(docs, tokenizer)
    if skipped:
        info(f"warning: skipping {skipped} examples with characters the {tokenizer.kind} tokenizer cannot encode")
    result = hellaswag.score(model, examples, cfg.batch_size, ctx, device, progress=True)
    cut = f", {result['truncated']:,} with the context cut to fit" if result["truncated"] else ""
    info(f"{cfg.task}: acc_norm {result['acc_norm']:.4f}, acc {result['acc']:.4f}, acc_norm_tokens "
         f"{result['acc_norm_tokens']:.4f} ({result['examples']:,} examples{cut})")
    return {"model": path, "task": cfg.task, "data": cfg.task_file or hellaswag.HUB_DATASET, **result,
            "skipped": skipped}


def main(argv=None):
    print(json.dumps(evaluate(parse_args(EvalConfig, argv, prog="eval.py"))))


if __name__ == "__main__":
    run(main)

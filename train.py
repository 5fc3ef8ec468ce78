"""
Train a GPT on a prepared dataset.

    python train.py config/shakespeare_char.py --device=cpu --max_iters=2000
    python train.py --init_from=resume --out_dir=out/shakespeare_char     # continue where it stopped
    torchrun --standalone --nproc_per_node=8 train.py config/tinystories_124m.py

Keys keep nanoGPT's names; `python train.py --help` lists them all. Outputs in out_dir:
ckpt.pt (latest), best.pt (lowest val loss) and metrics.jsonl (one JSON object per log line or eval).
"""

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch

import checkpoint
import hf
from configurator import UserError, config_dict, parse_overrides, run
from dataloader import DataLoader, dataset_dir
from model import GPT, GPTConfig, estimate_mfu
from shards import read_meta
from tokenizer import same_tokenizer


@dataclass
class TrainConfig:
    """Train a GPT language model. Defaults are nanoGPT's GPT-2 124M recipe, on TinyStories."""
    # I/O
    out_dir: str = "out"  # checkpoints and metrics.jsonl go here
    eval_interval: int = 2000  # evaluate, and write checkpoints, every this many steps (and at the end)
    log_interval: int = 1  # print and record the training loss every this many steps
    eval_iters: int = 200  # batches per split for each evaluation
    eval_only: bool = False  # evaluate once and exit
    always_save_checkpoint: bool = True  # write ckpt.pt at every eval; False: only when val loss improves (and at the end)
    init_from: str = "scratch"  # scratch, resume from out_dir/ckpt.pt, or a Hugging Face GPT-2 directory to fine-tune
    seed: int = 1337  # model init, data order and dropout all follow from it
    # wandb logging
    wandb_log: bool = False  # also log to Weights & Biases (WANDB_MODE=offline works)
    wandb_project: str = "nanogpt"  # wandb project
    wandb_run_name: str = "run"  # wandb run name
    # data
    dataset: str = "tinystories"  # a folder under data_root made by prepare.py (or a path to one)
    data_root: str = "data"  # where prepared datasets live
    gradient_accumulation_steps: int = 40  # micro-batches per optimizer step, summed over all processes
    batch_size: int = 12  # sequences per micro-batch and process
    block_size: int = 1024  # context length in tokens
    # model
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # dropout probability (0 for pretraining; try 0.1+ to fine-tune or on small data)
    bias: bool = False  # biases in Linear and LayerNorm layers (GPT-2 had them; without is a bit faster)
    # AdamW optimizer
    learning_rate: float = 6e-4  # peak learning rate
    max_iters: int = 600000  # optimizer steps in all
    weight_decay: float = 0.1  # decoupled weight decay on matrices (not biases or norms)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # clip the gradient norm to this (0: no clipping)
    # learning rate schedule: linear warmup, then cosine decay to min_lr
    decay_lr: bool = True  # False: constant learning_rate
    warmup_iters: int = 2000  # steps of linear warmup
    lr_decay_iters: int = 600000  # step at which the cosine reaches min_lr (usually max_iters)
    min_lr: float = 6e-5  # final learning rate (usually learning_rate / 10)
    # system
    backend: str = "nccl"  # torch.distributed backend under torchrun (nccl on GPUs; CPUs always use gloo)
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps
    dtype: str = "auto"  # auto (bfloat16 where the GPU has it, else float16; float32 on CPU), float32, bfloat16, float16
    compile: Optional[bool] = None  # torch.compile the model (None: on for CUDA, off otherwise)


MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")


def get_lr(it, cfg):
    """Linear warmup from ~0 to learning_rate, then a cosine down to min_lr at lr_decay_iters."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


# ---------------------------------------------------------------------------------------------
# set-up: everything that can fail is checked here, before the first step

def resolve_device(device):
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device}, but this PyTorch sees no CUDA GPU: use --device=cpu (or auto)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={device}, but MPS is not available here: use --device=cpu (or auto)")
    if kind not in ("cpu", "cuda", "mps"):
        raise UserError(f"device={device!r}: expected auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(dtype, device_type):
    if dtype == "auto":
        if device_type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"dtype={dtype!r}: expected auto, float32, bfloat16 or float16")
    if dtype == "float16" and device_type != "cuda":
        raise UserError(f"dtype=float16 needs a CUDA GPU (its loss scaling is CUDA-only): use bfloat16 or float32")
    return dtype


def autocast(device_type, dtype):
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


def check_config(cfg):
    for key in ("batch_size", "block_size", "gradient_accumulation_steps", "n_layer", "n_head", "n_embd",
                "eval_iters", "eval_interval", "log_interval"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{key}={getattr(cfg, key)}: must be at least 1")
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"n_embd={cfg.n_embd} is not a multiple of n_head={cfg.n_head}")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"dropout={cfg.dropout}: must be in [0, 1)")
    if cfg.init_from not in ("scratch", "resume") and not os.path.isdir(cfg.init_from):
        raise UserError(f"init_from={cfg.init_from!r}: expected scratch, resume, or a Hugging Face GPT-2 directory")
    if cfg.max_iters < 0:
        raise UserError(f"max_iters={cfg.max_iters}: must be at least 0")


def setup_distributed(cfg):
    """(rank, local_rank, world_size); under torchrun this joins the process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 0, 1
    import torch.distributed as dist
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if cfg.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be a multiple of "
                        f"the number of processes ({world}): it counts micro-batches over all of them")
    backend = cfg.backend
    if backend == "nccl" and (cfg.device.startswith(("cpu", "mps")) or not torch.cuda.is_available()):
        backend = "gloo"  # NCCL is GPU-only
    dist.init_process_group(backend=backend)
    return rank, local_rank, world


def load_resume(cfg, overrides, device):
    """The checkpoint to resume from, and the config: the checkpoint's, with this command's overrides."""
    path = os.path.join(cfg.out_dir, checkpoint.CKPT)
    if not os.path.isfile(path):
        raise UserError(f"init_from=resume, but {cfg.out_dir} has no {checkpoint.CKPT}: check --out_dir, "
                        f"or start with --init_from=scratch")
    ckpt = checkpoint.load(path, device)
    saved = ckpt["config"]
    for key in MODEL_KEYS:
        if key in overrides and key in saved and overrides[key] != saved[key]:
            raise UserError(f"cannot resume with {key}={overrides[key]}: the checkpoint in {cfg.out_dir} has "
                            f"{key}={saved[key]}")
    known = {f.name for f in fields(TrainConfig)}
    merged = {**{k: v for k, v in saved.items() if k in known}, **overrides}
    return ckpt, TrainConfig(**merged)


class Metrics:
    """metrics.jsonl (and wandb): one JSON object per log line or eval."""

    def __init__(self, path, resume_iter=None, wandb_run=None):
        self.path, self.wandb = path, wandb_run
        if resume_iter is not None and os.path.exists(path):
            # events past the checkpoint belong to the part of the old run that is being redone
            kept = [line for line in open(path) if line.strip() and json.loads(line).get("iter", 0) <= resume_iter]
            checkpoint_tmp = path + ".tmp"
            with open(checkpoint_tmp, "w") as f:
                f.writelines(kept)
            os.replace(checkpoint_tmp, path)
        elif resume_iter is None and os.path.exists(path):
            os.remove(path)
        self.f = open(path, "a")

    def log(self, event):
        self.f.write(json.dumps(event) + "\n")
        self.f.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in event.items() if k != "iter" and v is not None}, step=event["iter"])

    def close(self):
        self.f.close()
        if self.wandb is not None:
            self.wandb.finish()


def init_wandb(cfg):
    import wandb
    try:
        return wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=config_dict(cfg), dir=cfg.out_dir)
    except Exception as e:
        raise UserError(f"wandb.init failed ({type(e).__name__}: {str(e).splitlines()[0][:150]}): run `wandb login`, "
                        f"or set WANDB_MODE=offline to log locally") from None


@torch.no_grad()
def evaluate(model, loaders, eval_iters, ctx, rank=0, world=1):
    """Mean loss per split over eval_iters batches of windows spread evenly over the split: the same
    windows every time, so evals are comparable, and a stratified sample, so they track the loss on the
    whole split. Under DDP each process takes every world-th batch and the sums are combined."""
    model.eval()
    out = {}
    for split, loader in loaders.items():
        total = torch.zeros((), device=loader.device)
        for k, (x, y) in enumerate(loader.spread_batches(eval_iters)):
            if k % world == rank:
                with ctx:
                    total += model(x, y)[1].float()
        if world > 1:
            torch.distributed.all_reduce(total)
        out[split] = total.item() / eval_iters
    model.train()
    return out


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ---------------------------------------------------------------------------------------------

def train(cfg, overrides=None):
    """Train as cfg says; returns a summary dict. overrides: the keys the user set explicitly
    (they win over a resumed checkpoint's config)."""
    check_config(cfg)
    rank, local_rank, world = setup_distributed(cfg)
    master = rank == 0
    device = resolve_device(cfg.device)
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    device_type = device.split(":")[0]

    ckpt = None
    if cfg.init_from == "resume":
        ckpt, cfg = load_resume(cfg, overrides or {}, device)
        check_config(cfg)
    dtype = resolve_dtype(cfg.dtype, device_type)
    use_compile = cfg.compile if cfg.compile is not None else device_type == "cuda"
    ctx = autocast(device_type, dtype)

    data_dir = dataset_dir(cfg.dataset, cfg.data_root)
    meta = read_meta(data_dir)
    if ckpt is not None and not same_tokenizer(meta["tokenizer"], ckpt["tokenizer"]):
        a, b = meta["tokenizer"], ckpt["tokenizer"]
        raise UserError(f"dataset {data_dir} uses tokenizer {a['kind']} (vocab {a['vocab_size']}), but the checkpoint "
                        f"was trained with {b['kind']} (vocab {b['vocab_size']}): resume on data prepared with the "
                        f"same tokenizer, or start from scratch")
    hf_args, hf_state = {}, None
    if ckpt is None and cfg.init_from != "scratch":  # fine-tune a Hugging Face GPT-2: it fixes the model's shape
        cfg, hf_args, hf_state = hf.init_from_hf(cfg.init_from, cfg, overrides or {}, meta["tokenizer"])
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        if ckpt is None and os.path.exists(os.path.join(cfg.out_dir, checkpoint.CKPT)):
            raise UserError(f"{cfg.out_dir} already holds a run's {checkpoint.CKPT}: continue it with "
                            f"--init_from=resume, or choose another --out_dir (nothing was overwritten)")
        if not os.access(cfg.out_dir, os.W_OK):
            raise UserError(f"out_dir {cfg.out_dir} is not writable")

    torch.manual_seed(cfg.seed + rank)
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: ~free speed, a loss indistinguishable
        torch.backends.cudnn.allow_tf32 = True

    # data: each process takes its slice of one global stream of windows
    loader = DataLoader(data_dir, "train", cfg.batch_size, cfg.block_size, cfg.seed, rank, world, device)
    eval_loaders = {split: DataLoader(data_dir, split, cfg.batch_size, cfg.block_size, device=device)
                    for split in ("train", "val")}

    # model
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      bias=cfg.bias, vocab_size=meta["tokenizer"]["vocab_size"], dropout=cfg.dropout)
    # keys with no option here (an imported GPT-2's gelu_approx) come from the weights' own model args
    model_args = {**(ckpt["model_args"] if ckpt is not None else hf_args), **model_args}
    model = GPT(GPTConfig(**model_args)).to(device)
    if hf_state is not None:
        model.load_state_dict(hf_state)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
    iter_num, best_val_loss = 0, float("inf")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        loader.load_state_dict(ckpt["loader"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        if device_type == "cuda" and len(ckpt["rng"]["cuda"]):
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
        del ckpt
    raw_model = model
    if use_compile:
        model = torch.compile(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)

    micro_steps = cfg.gradient_accumulation_steps // world
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    flops_per_token = raw_model.flops_per_token()
    metrics = None
    if master:
        c = meta["counts"]
        print(f"data {data_dir}: {c['train']['tokens']:,} train / {c['val']['tokens']:,} val tokens, "
              f"tokenizer {meta['tokenizer']['kind']} (vocab {model_args['vocab_size']:,})")
        print(f"model: {raw_model.get_num_params() / 1e6:.2f}M parameters, {cfg.n_layer} layers, {cfg.n_head} heads, "
              f"{cfg.n_embd} wide, context {cfg.block_size}")
        print(f"{device} {dtype}{' compiled' if use_compile else ''}{f', {world} processes' if world > 1 else ''}: "
              f"{tokens_per_iter:,} tokens per step ({micro_steps} x {cfg.batch_size} x {cfg.block_size}"
              f"{f' x {world}' if world > 1 else ''}), {'resuming at' if iter_num else 'starting at'} step {iter_num}"
              f" of {cfg.max_iters}")
        metrics = Metrics(os.path.join(cfg.out_dir, "metrics.jsonl"), iter_num if cfg.init_from == "resume" else None,
                          init_wandb(cfg) if cfg.wandb_log else None)

    def save(path, full):
        state = {"model": raw_model.state_dict(), "model_args": model_args, "config": config_dict(cfg),
                 "tokenizer": meta["tokenizer"], "iter_num": iter_num, "best_val_loss": best_val_loss}
        if full:
            state.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), loader=loader_state,
                         rng={"torch": torch.get_rng_state(),
                              "cuda": torch.cuda.get_rng_state(device) if device_type == "cuda" else torch.zeros(0)})
        checkpoint.save(state, path)

    # the loop: evaluate and checkpoint at the top, then one optimizer step of micro_steps micro-batches
    loader_state = loader.state_dict()  # the position of the batch not yet trained on: what a resume restores
    X, Y = loader.next_batch()
    start_iter, t_start, t_log, iters_since_log = iter_num, time.time(), time.time(), 0
    loss_sum, grad_norm = torch.zeros((), device=device), None
    while True:
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        at_end = iter_num >= cfg.max_iters or cfg.eval_only
        if (iter_num % cfg.eval_interval == 0 or at_end) and (iter_num > start_iter or iter_num == 0 or at_end):
            t_eval = time.time()
            losses = evaluate(model, eval_loaders, cfg.eval_iters, ctx, rank, world)
            if master:
                improved = losses["val"] < best_val_loss
                best_val_loss = min(best_val_loss, losses["val"])
                ppl = math.exp(min(losses["val"], 50))
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
                      f"(perplexity {ppl:.2f}){' best' if improved else ''}")
                metrics.log({"iter": iter_num, "tokens": iter_num * tokens_per_iter, "train_loss": losses["train"],
                             "val_loss": losses["val"], "val_ppl": ppl, "train_ppl": math.exp(min(losses["train"], 50)),
                             "time": round(time.time() - t_start, 3)})
                if iter_num > 0 and not cfg.eval_only:
                    if improved:
                        save(os.path.join(cfg.out_dir, checkpoint.BEST), full=False)
                    if cfg.always_save_checkpoint or improved or at_end:
                        save(os.path.join(cfg.out_dir, checkpoint.CKPT), full=True)
            t_log += time.time() - t_eval  # evals are not training time: keep them out of tokens/s
        if at_end:
            break

        for micro in range(micro_steps):
            if world > 1:  # all-reduce the gradients only on the last micro-batch
                model.require_backward_grad_sync = micro == micro_steps - 1
            with ctx:
                _, loss = model(X, Y)
                loss = loss / micro_steps
            loss_sum += loss.detach()
            # fetch the next batch while the GPU is busy with this one
            loader_state = loader.state_dict()
            X, Y = loader.next_batch()
            scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1
        iters_since_log += 1

        if iter_num % cfg.log_interval == 0 or iter_num == cfg.max_iters:
            if world > 1:
                torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
            lossf = loss_sum.item() / iters_since_log  # .item() waits for the GPU: only at log time
            now = time.time()
            tok_s = iters_since_log * tokens_per_iter / max(now - t_log, 1e-9)
            mfu = estimate_mfu(flops_per_token, tok_s / world, device)
            eta = (now - t_start) / (iter_num - start_iter) * (cfg.max_iters - iter_num)
            if master:
                print(f"iter {iter_num}/{cfg.max_iters}: loss {lossf:.4f}, lr {lr:.2e}, {tok_s:,.0f} tok/s"
                      f"{f', mfu {mfu * 100:.1f}%' if mfu is not None else ''}, eta {fmt_time(eta)}")
                metrics.log({"iter": iter_num, "tokens": iter_num * tokens_per_iter, "loss": lossf, "lr": lr,
                             "grad_norm": None if grad_norm is None else grad_norm.item(),
                             "tokens_per_sec": round(tok_s, 1), "mfu": mfu, "time": round(now - t_start, 3)})
            loss_sum.zero_()
            t_log, iters_since_log = now, 0

    if master:
        metrics.close()
        print(f"done: {iter_num} steps in {fmt_time(time.time() - t_start)}, best val loss {best_val_loss:.4f}; "
              f"checkpoints in {cfg.out_dir}")
    if world > 1:
        torch.distributed.barrier()  # let rank 0 finish writing before any process leaves
        torch.distributed.destroy_process_group()
    return {"iter_num": iter_num, "best_val_loss": best_val_loss, "out_dir": cfg.out_dir}


def main(argv=None):
    overrides = parse_overrides(TrainConfig, argv, prog="train.py")
    train(TrainConfig(**overrides), overrides)


if __name__ == "__main__":
    run(main)

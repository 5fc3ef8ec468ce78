"""
Train a GPT on a prepared dataset.

    python train.py config/shakespeare_char.py --device=cpu --max_iters=2000
    python train.py --init_from=resume --out_dir=out/shakespeare_char     # continue where it stopped
    torchrun --standalone --nproc_per_node=8 train.py config/tinystories_124m.py

Keys keep nanoGPT's names; `python train.py --help` lists them all. Outputs in out_dir: ckpt.pt
(latest), best.pt (lowest val loss), metrics.jsonl (one JSON object per log line or eval) and
loss.png. Kill it at any moment: --init_from=resume continues from the last checkpoint exactly as
if nothing had happened. SIGTERM or Ctrl-C saves a checkpoint first.
"""

import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional

if __name__ == "__main__":  # Ctrl-C while torch loads exits quietly; run() gives it back its usual meaning
    __import__("configurator").quiet_interrupts()
import torch

import checkpoint
import distributed
import faults
import hf
import tokenizer
from configurator import UserError, check_types, config_dict, parse_overrides, run
from dataloader import DataLoader, dataset_dir
from devices import autocast, resolve_device, resolve_dtype
from metrics import Metrics, Progress, estimate_mfu, slow_run_warning
import model
from model import GPT, GPTConfig
from shards import check_tokens, fingerprint, read_meta, release_lock, shard_paths


@dataclass
class TrainConfig:
    """Train a GPT language model. Defaults are nanoGPT's GPT-2 124M recipe, on TinyStories."""
    # I/O
    out_dir: str = "out"  # checkpoints and metrics.jsonl go here
    eval_interval: int = 2000  # evaluate, and write checkpoints, every this many steps (and at the end)
    log_interval: int = 1  # print and record the training loss every this many steps
    eval_iters: int = 200  # batches per split for each evaluation
    eval_only: bool = False  # evaluate once and exit
    eval_tasks: str = ""  # also score a downstream task at every eval: hellaswag (hellaswag.py; empty: none)
    eval_tasks_examples: int = 0  # score the task's first this many examples at each eval (0: all; HellaSwag has 10,042)
    eval_tasks_file: str = ""  # the task's examples as a local .jsonl (HellaSwag's hellaswag_val.jsonl); empty: the Hugging Face Hub
    always_save_checkpoint: bool = True  # write ckpt.pt at every eval; False: only when val loss improves (and at the end)
    init_from: str = "scratch"  # scratch, resume from out_dir/ckpt.pt, auto (resume if out_dir has a ckpt.pt, else scratch: for torchrun --max-restarts), or a Hugging Face GPT-2 directory to fine-tune
    seed: int = 1337  # model init, data order and dropout all follow from it
    # wandb logging
    wandb_log: bool = False  # also log to Weights & Biases (WANDB_MODE=offline works)
    wandb_project: str = "nanogpt"  # wandb project
    wandb_run_name: str = "run"  # wandb run name
    # data
    check_data: str = "full"  # before the first step: full (every token id of every shard against the vocabulary, GB/s: docs/benchmarks.md), or sample (headers and 4096 tokens a shard)
    allow_data_change: bool = False  # resume even though the dataset changed since the checkpoint (prepare.py --overwrite); never saved for later resumes
    dataset: str | dict = "tinystories"  # a folder under data_root made by prepare.py (or a path to one), or a mix: {'tinystories': 0.9, 'shakespeare': 0.1}
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
    pad_vocab_to: int = 64  # give the token table and head rows up to a multiple of this (GPU-friendly shapes; 1: off)
    # modern switches (docs/recipes.md), all off: GPT-2 classic
    rope: bool = False  # rotary position embeddings instead of a learned position table
    norm: str = "layernorm"  # layernorm, or rmsnorm
    qk_norm: bool = False  # RMS-normalize queries and keys per head before attention
    mlp: str = "gelu"  # gelu, relu2 (ReLU squared) or swiglu (a gated MLP of the same size)
    tie_embeddings: bool = True  # share the token embedding and the output head (False: separate matrices)
    zero_init: bool = False  # start the blocks' output projections (and an untied head) at zero
    logit_softcap: float = 0.0  # > 0: squash logits smoothly into (-c, c) with c * tanh(logits / c)
    # AdamW optimizer
    learning_rate: float = 6e-4  # peak learning rate
    max_iters: int = 600000  # optimizer steps in all
    weight_decay: float = 0.1  # decoupled weight decay on matrices (not biases or norms)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    optimizer: str = "adamw"  # adamw, or muon: Muon for the blocks' weight matrices, AdamW for the rest
    muon_lr: float = 0.02  # Muon's peak learning rate (the schedule scales it like learning_rate)
    muon_momentum: float = 0.95  # Muon's momentum
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
    gradient_checkpointing: bool = False  # recompute activations during backward: much less memory, ~1/3 more compute
    dist_timeout: int = 600  # under torchrun: seconds a collective waits for a silent process before the run stops (a hung rank)
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state over the GPUs (FSDP2) instead of copying them (DDP)
    # faults
    keep_last_n: int = 0  # also keep the last n checkpoints as ckpt_NNNNNNN.pt (0: only ckpt.pt and best.pt)
    spike_threshold: float = 10.0  # skip a step whose loss is this many robust standard deviations above the recent median (0: off)
    max_skipped_steps: int = 3  # after this many skipped steps in a row, roll back to the last checkpoint and halve the learning rate
    # observability
    plot: bool = True  # redraw out_dir/loss.png at every eval
    sample_prompt: str = ""  # prompt of the sample printed at every eval ('' starts from end-of-text)
    sample_tokens: int = 64  # length of the sample printed at every eval (0: no sample)


SWITCHES = ("rope", "norm", "qk_norm", "mlp", "tie_embeddings", "zero_init", "logit_softcap")  # GPTConfig's too
# the keys that make the model what it is, which a resume cannot change (zero_init only sets the first weights)
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "pad_vocab_to") + tuple(
    k for k in SWITCHES if k != "zero_init")
# the optimizer's hyperparameters: a resume takes them from the command line over the checkpoint's
OPTIMIZER_KEYS = ("base_lr", "weight_decay", "betas", "momentum")


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

def check_config(cfg):
    for key in ("batch_size", "block_size", "gradient_accumulation_steps", "n_layer", "n_head", "n_embd",
                "eval_iters", "eval_interval", "log_interval", "dist_timeout"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{key}={getattr(cfg, key)}: must be at least 1")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"dropout={cfg.dropout}: must be in [0, 1)")
    for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "muon_lr", "warmup_iters", "lr_decay_iters",
                "spike_threshold", "logit_softcap", "sample_tokens"):
        value = getattr(cfg, key)
        if not (math.isfinite(value) and value >= 0):  # a negative rate or clip is a typo, never "off"
            raise UserError(f"{key}={value}: must be a finite number, at least 0 (0 turns off what can be off)")
    for key in ("beta1", "beta2", "muon_momentum"):
        if not 0 <= getattr(cfg, key) < 1:
            raise UserError(f"{key}={getattr(cfg, key)}: must be in [0, 1)")
    if not 0 <= cfg.seed < 2**63:
        raise UserError(f"seed={cfg.seed}: must be in [0, 2**63)")
    if not cfg.out_dir.strip():
        raise UserError("out_dir is empty: name the folder for checkpoints and metrics, e.g. --out_dir=out")
    if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        raise UserError(f"out_dir={cfg.out_dir!r} is a file, not a folder: choose another --out_dir")
    if isinstance(cfg.dataset, dict) and (not cfg.dataset or not all(
            isinstance(k, str) and isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < math.inf
            for k, w in cfg.dataset.items())):
        raise UserError(f"dataset={cfg.dataset!r}: a mix is {{'name': weight, ...}} with positive weights (finite numbers)")
    if cfg.init_from not in ("scratch", "resume", "auto") and not os.path.isdir(cfg.init_from):
        raise UserError(f"init_from={cfg.init_from!r}: expected scratch, resume, auto, or a Hugging Face GPT-2 directory")
    try:
        model.check_config(GPTConfig(**{k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "pad_vocab_to") + SWITCHES}))
    except ValueError as e:
        raise UserError(str(e)) from None
    if cfg.eval_tasks and cfg.eval_tasks not in ("hellaswag",):  # checked now, not at the first eval
        raise UserError(f"eval_tasks={cfg.eval_tasks!r}: the tasks are hellaswag (or '' for none)")
    if cfg.eval_tasks_examples < 0:
        raise UserError(f"eval_tasks_examples={cfg.eval_tasks_examples}: must be at least 0 (0: all)")
    if cfg.eval_tasks_file and not os.path.isfile(cfg.eval_tasks_file):
        raise UserError(f"eval_tasks_file {cfg.eval_tasks_file} not found: HellaSwag's hellaswag_val.jsonl, or leave "
                        f"it empty to read the Hugging Face Hub")
    if cfg.check_data not in ("full", "sample"):
        raise UserError(f"check_data={cfg.check_data!r}: expected full or sample")
    if cfg.optimizer not in ("adamw", "muon"):
        raise UserError(f"optimizer={cfg.optimizer!r}: expected adamw or muon")
    if cfg.optimizer == "muon" and cfg.fsdp:
        raise UserError("optimizer=muon needs whole matrices; it does not work with fsdp=True (use DDP)")
    if cfg.max_iters < 0 or cfg.keep_last_n < 0 or cfg.max_skipped_steps < 1:
        raise UserError("max_iters and keep_last_n must be at least 0, max_skipped_steps at least 1")


def load_resume(cfg, overrides):
    """The checkpoint to resume from, and the config: the checkpoint's, with this command's overrides."""
    path = os.path.join(cfg.out_dir, checkpoint.CKPT)
    if not os.path.isfile(path):
        raise UserError(f"init_from=resume, but {cfg.out_dir} has no {checkpoint.CKPT}: check --out_dir, "
                        f"or start with --init_from=scratch")
    ckpt = checkpoint.load(path, shards=())  # a sharded state is read in load_state_dict, where FSDP is known
    if ("optimizer" not in ckpt and "sharded" not in ckpt) or not isinstance(ckpt.get("config"), dict):
        raise UserError(f"{path} holds weights only (a best.pt or an export), not a run's state: it cannot be "
                        f"resumed; sample or evaluate it, or fine-tune it from a Hugging Face export (export.py)")
    saved = ckpt["config"]
    clash = [k for k in MODEL_KEYS if k != "pad_vocab_to" and k in saved and saved[k] != ckpt["model_args"].get(k, saved[k])]
    if clash:  # a checkpoint edited by hand, or damaged in a way its checksum did not catch
        raise UserError(f"{path} is inconsistent: its config says {clash[0]}={saved[clash[0]]!r}, its model_args "
                        f"{ckpt['model_args'][clash[0]]!r}; resume from another checkpoint")
    for key in MODEL_KEYS + ("optimizer",):
        if key in overrides and key in saved and overrides[key] != saved[key]:
            raise UserError(f"cannot resume with {key}={overrides[key]}: the checkpoint in {cfg.out_dir} has "
                            f"{key}={saved[key]}")
    try:  # a checkpoint is data from a file: its config is checked like a command line
        saved = check_types(TrainConfig, {k: v for k, v in saved.items()
                                          if k not in overrides and k != "allow_data_change"})  # asked each time
    except UserError as e:
        raise UserError(f"{path} has a malformed config: {e}") from None
    return ckpt, TrainConfig(**{**saved, **overrides})


@torch.no_grad()
def evaluate(model, loaders, eval_iters, ctx, rank=0, world=1, should_stop=None):
    """Mean loss per split over eval_iters batches of windows spread evenly over the split: the same
    windows every time, so evals are comparable, and a stratified sample, so they track the loss on the
    whole split. Under DDP each process takes every world-th batch and the sums are combined.
    should_stop() is asked after every batch: when it says so, the eval is dropped and None returned.
    Under FSDP (and DDP with buffers) a forward is a collective, as is the stop check: every process
    runs the same sequence of them, one batch per process and round, a repeat where a round is short."""
    model.eval()
    out = {}
    for split, loader in loaders.items():
        totals = torch.zeros(len(loader.streams), device=loader.device)
        batches = [0] * len(loader.streams)
        # eval_iters batches can take minutes on a CPU: a bar on a terminal, else a line every 30 s or so
        k = -1
        with Progress(eval_iters, f"eval {split}", "batches", enabled=not rank) as progress:
            for k, (j, x, y) in enumerate(loader.spread_batches(eval_iters)):
                batches[j] += 1
                if k % world == rank:
                    with ctx:
                        totals[j] += model(x, y, return_logits=False)[1].float()  # no (B, T, vocab) tensor kept
                progress.update()
                if should_stop is not None and (k + 1) % world == 0 and should_stop():  # a preempted job cannot wait
                    model.train()
                    return None
        if world > 1:
            if rank > k % world:  # the last round was short of this process's batch: a forward that is not counted
                with ctx:
                    model(x, y, return_logits=False)
            torch.distributed.all_reduce(totals)
        means = [t / n for t, n in zip(totals.tolist(), batches)]
        out[split] = float(sum(w * m for w, m in zip(loader.weights, means)))  # a mix: weighted like its training
        if len(means) > 1:
            out[f"{split}_by_dataset"] = means
    model.train()
    return out


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Trainer:
    """One run, read top to bottom: the set-up in four named steps (process, data, model, state), the
    loop (steps, evals, logs), what it does about faults, and the checkpoint, which is the whole of its
    state: resuming, rolling back after bad steps and stopping on a signal all go through state_dict()
    and load_state_dict(). Many processes: distributed.py; fault policies and memory: faults.py."""

    def __init__(self, cfg, overrides=None):
        overrides = overrides or {}
        self.lock = None  # out_dir's lock (rank 0), held from setup_data to the end of run()
        try:
            ckpt = self.setup_process(cfg, overrides)
            hf_args, hf_state = self.setup_data(ckpt, overrides)
            self.setup_model(ckpt, hf_args, hf_state)
            self.setup_state(ckpt)
        except BaseException as e:
            self.close()
            if distributed.is_lost_process(e, getattr(self, "world", 1)):  # another process died in its set-up
                distributed.finish(self.world, ok=False)
                raise distributed.lost_process_error(self.rank, e) from None
            if isinstance(e, UserError):
                e.every_rank = True  # the config and the data are the same on every process (configurator.run)
            raise
        if self.master:
            self.print_header()

    def setup_process(self, cfg, overrides):
        """Config, process group, device and precision; on resume the checkpoint, whose config the
        command line's keys override. Returns the checkpoint (None for a new run)."""
        check_config(cfg)
        self.rank, local_rank, self.world = distributed.setup(cfg)
        self.master = self.rank == 0
        device = resolve_device(cfg.device)
        if self.world > 1 and device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        self.device, self.device_type = device, device.split(":")[0]
        if self.device_type == "cpu" and sys.platform == "linux":
            faults.keep_freed_memory()
        ckpt = None
        if cfg.init_from == "resume" or (cfg.init_from == "auto" and os.path.isfile(os.path.join(cfg.out_dir, checkpoint.CKPT))):
            ckpt, cfg = load_resume(cfg, overrides)
            check_config(cfg)
        self.cfg = cfg
        self.fsdp = cfg.fsdp and self.world > 1
        self.dtype = resolve_dtype(cfg.dtype, self.device_type)
        self.use_compile = cfg.compile if cfg.compile is not None else self.device_type == "cuda"
        self.ctx = autocast(self.device_type, self.dtype)
        if self.device_type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls: ~free speed, a loss indistinguishable
            torch.backends.cudnn.allow_tf32 = True
        return ckpt

    def setup_data(self, ckpt, overrides):
        """The datasets (one tokenizer for all, the checkpoint's), out_dir taken for this run, and the
        loaders: each process takes its slice of one global stream of windows. A Hugging Face model to
        fine-tune is read here too, as it fixes the config's shape: returns its (model args, weights)."""
        cfg = self.cfg
        mix = cfg.dataset if isinstance(cfg.dataset, dict) else {cfg.dataset: 1.0}
        self.dataset_names, self.weights = list(mix), list(mix.values())
        self.data_dirs = [dataset_dir(name, cfg.data_root) for name in mix]
        self.metas = [read_meta(d) for d in self.data_dirs]
        self.meta = self.metas[0]
        for d, m in zip(self.data_dirs[1:], self.metas[1:]):
            if not tokenizer.same_tokenizer(m["tokenizer"], self.meta["tokenizer"]):
                raise UserError(f"the datasets of a mix must share a tokenizer: {self.data_dirs[0]} uses "
                                f"{self.meta['tokenizer']['kind']} (vocab {self.meta['tokenizer']['vocab_size']}), {d} "
                                f"uses {m['tokenizer']['kind']} (vocab {m['tokenizer']['vocab_size']}); prepare them alike")
        if ckpt is not None and not tokenizer.same_tokenizer(self.meta["tokenizer"], ckpt["tokenizer"]):
            a, b = self.meta["tokenizer"], ckpt["tokenizer"]
            raise UserError(f"dataset {cfg.dataset} uses tokenizer {a['kind']} (vocab {a['vocab_size']}), but the "
                            f"checkpoint was trained with {b['kind']} (vocab {b['vocab_size']}): resume on data "
                            f"prepared with the same tokenizer, or start from scratch")
        self.data_fingerprint = [fingerprint(d) for d in self.data_dirs]
        saved = ckpt.get("data_fingerprint") if ckpt is not None else None
        if saved is not None and saved != self.data_fingerprint and not cfg.allow_data_change:
            changed = [d for d, a, b in zip(self.data_dirs, saved, self.data_fingerprint) if a != b] or self.data_dirs
            raise UserError(f"the data changed since {cfg.out_dir}/{checkpoint.CKPT} was written ({', '.join(changed)}: "
                            f"its meta.json or shards differ, e.g. prepare.py --overwrite): resume on the same data, "
                            f"or pass --allow_data_change=True to continue on the new data")
        hf_args, hf_state = {}, None
        if ckpt is None and cfg.init_from not in ("scratch", "auto"):  # fine-tune a Hugging Face GPT-2: it fixes the shape
            cfg, hf_args, hf_state = hf.init_from_hf(cfg.init_from, cfg, overrides, self.meta["tokenizer"])
            self.cfg = cfg
        if self.master:
            self.lock = checkpoint.claim(cfg.out_dir, resuming=ckpt is not None, auto=cfg.init_from == "auto")
        self.loader = DataLoader(self.data_dirs, "train", cfg.batch_size, cfg.block_size, cfg.seed, self.rank,
                                 self.world, self.device, self.weights)
        self.eval_loaders = {split: DataLoader(self.data_dirs, split, cfg.batch_size, cfg.block_size,
                                               device=self.device, weights=self.weights) for split in ("train", "val")}
        return hf_args, hf_state

    def setup_model(self, ckpt, hf_args, hf_state):
        """The model (checked against the data and the memory before it is built), its wrapping for
        compile and many processes, and the optimizer."""
        cfg = self.cfg
        self.model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                               bias=cfg.bias, vocab_size=self.meta["tokenizer"]["vocab_size"], dropout=cfg.dropout,
                               **{k: getattr(cfg, k) for k in SWITCHES},
                               # a checkpoint keeps its padding; older ones, written before the key, have none
                               pad_vocab_to=cfg.pad_vocab_to if ckpt is None else ckpt["model_args"].get("pad_vocab_to", 1))
        # model args the config has no key for (gelu_approx of an imported GPT-2) come from the weights' source
        self.model_args = {**(ckpt["model_args"] if ckpt is not None else hf_args), **self.model_args}
        try:
            gpt_config = GPTConfig(**self.model_args)
        except TypeError as e:  # a checkpoint from another version, or edited by hand
            raise UserError(f"the checkpoint's model_args do not fit this code's GPTConfig: {e}") from None
        self.preflight(gpt_config)
        torch.manual_seed(cfg.seed)  # the same initial weights on every process (FSDP shards each one's copy)
        self.raw_model = GPT(gpt_config)
        if hf_state is not None:
            self.raw_model.load_state_dict(hf_state)
        torch.manual_seed(cfg.seed + self.rank)  # but each its own dropout
        self.raw_model.to(self.device)
        self.raw_model.gradient_checkpointing = cfg.gradient_checkpointing
        self.model = distributed.wrap(self.raw_model, self.world, self.fsdp, self.use_compile, self.device, self.dtype)
        self.optimizer = self.raw_model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                                             self.device_type, cfg.optimizer, cfg.muon_lr,
                                                             cfg.muon_momentum)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=(self.dtype == "float16"))
        # the optimizer's hyperparameters as this command's config says: they win over a resumed checkpoint's
        self.hyper = [{k: g[k] for k in OPTIMIZER_KEYS if k in g} for g in self.optimizer.param_groups]

    def setup_state(self, ckpt):
        """Where the run stands: a new run's counters, or the checkpoint's; and what the loop needs."""
        cfg = self.cfg
        self.iter_num, self.best_val_loss, self.lr_scale = 0, float("inf"), 1.0
        self.val_loss = None  # of the eval at evaluated_at: what a rollback target is judged by
        self.evaluated_at = -1  # the step of the last completed eval
        self.bad_steps = faults.BadSteps(cfg.spike_threshold)
        self.skipped_in_a_row = self.rollbacks = 0
        self.recover_to = None  # after a rollback: the val loss the run must get back to before saving again
        self.loader_state = self.loader.state_dict()
        if ckpt is not None:
            try:  # the run's parts in the checkpoint are data from a file: a malformed one is one line
                self.load_state_dict(ckpt)
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
                raise UserError(f"{cfg.out_dir}/{checkpoint.CKPT} holds a run state this code cannot restore "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}): resume "
                                f"from another checkpoint (ckpt_NNNNNNN.pt), or start again") from None
        self.start_iter = self.iter_num
        self.micro_steps = cfg.gradient_accumulation_steps // self.world
        self.tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
        self.flops_per_token = self.raw_model.flops_per_token()
        self.stop_request, self.train_seconds = faults.StopRequest(announce=self.master), 0.0
        self.metrics = None
        if self.master:
            self.metrics = Metrics(cfg.out_dir, self.iter_num if ckpt is not None else None,
                                   config_dict(cfg) if cfg.wandb_log else None)

    def close(self, release=False):
        """Release what the run holds: metrics.jsonl (and wandb), then out_dir's lock, whose file a run that
        ended cleanly removes (after a kill the file stays, harmless: a lock dies with its process)."""
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
            self.metrics = None
        if self.lock is not None:
            (release_lock if release else lambda f: f.close())(self.lock)
            self.lock = None

    def preflight(self, gpt_config):
        """What would otherwise fail later, checked before the first step (and before the model takes memory)."""
        cfg, vocab = self.cfg, self.model_args["vocab_size"]
        for split in ("train", "val"):
            for path in (p for d in self.data_dirs for p in shard_paths(d, split)):
                # the header's largest id, and every token (or a sample): no id past the vocabulary reaches the model
                check_tokens(path, vocab, sample=None if cfg.check_data == "full" else 4096, whose="the model's")
        if cfg.block_size > gpt_config.block_size:
            raise UserError(f"block_size={cfg.block_size} is longer than the model's position table "
                            f"({gpt_config.block_size})")
        with torch.device("meta"):  # the model's shapes without its memory: a model too big must not be built
            shapes = GPT(gpt_config)
        faults.check_memory(shapes, cfg, self.dtype, self.device, warn=print if self.master else lambda _: None)

    def print_header(self):
        cfg = self.cfg
        for d, m, w in zip(self.data_dirs, self.metas, self.weights):
            c = m["counts"]
            print(f"data {d}: {c['train']['tokens']:,} train / {c['val']['tokens']:,} val tokens, "
                  f"tokenizer {m['tokenizer']['kind']} (vocab {self.model_args['vocab_size']:,})"
                  f"{f', weight {w / sum(self.weights):.3f}' if len(self.weights) > 1 else ''}")
        print(f"model: {self.raw_model.get_num_params() / 1e6:.2f}M parameters, {cfg.n_layer} layers, "
              f"{cfg.n_head} heads, {cfg.n_embd} wide, context {cfg.block_size}")
        parallel = f", {self.world} processes ({'FSDP' if self.fsdp else 'DDP'})" if self.world > 1 else ""
        print(f"{self.device} {self.dtype}{' compiled' if self.use_compile else ''}{parallel}: "
              f"{self.tokens_per_iter:,} tokens per step ({self.micro_steps} x {cfg.batch_size} x {cfg.block_size}"
              f"{f' x {self.world}' if self.world > 1 else ''}), learning rate {cfg.learning_rate:.2e}, "
              f"{'resuming at' if self.iter_num else 'starting at'} step {self.iter_num} of {cfg.max_iters}")
        if warning := slow_run_warning(cfg, self.flops_per_token, self.raw_model.get_num_params(), self.device,
                                            self.dtype, self.iter_num, self.world):  # a GPU recipe on a CPU
            print(warning)

    # -- the loop: steps, evals, logs ----------------------------------------------------------

    def run(self):
        clean = False
        try:
            with self.stop_request:  # to the very end: the last barrier is a collective too
                try:
                    result = self._loop()
                    self.close(release=True)
                    distributed.finish(self.world)
                    clean = True
                    return result
                except Exception as e:
                    if distributed.is_lost_process(e, self.world):
                        # torchrun's SIGTERM to the survivors follows at once: it must not cut the one line short
                        self.stop_request.previous = dict.fromkeys(self.stop_request.previous, signal.SIG_IGN)
                        raise distributed.lost_process_error(self.rank, e) from None
                    raise
        except Exception as e:
            if faults.is_out_of_memory(e):
                raise UserError(faults.out_of_memory_advice(self.cfg)) from None
            raise
        finally:
            if not clean:
                self.close()
                distributed.finish(self.world, ok=False)

    def _loop(self):
        cfg = self.cfg
        self.fetch()
        self.t0 = t_log = time.time()
        losses, stopped, eval_seconds = [], 0, 0.0
        while True:
            at_end = self.iter_num >= cfg.max_iters or cfg.eval_only
            # every eval_interval steps and at the end, once: a resumed run evaluates the step it was saved
            # at only if that eval was cut short (the checkpoint says), so its events equal an unbroken run's
            if cfg.eval_only or ((self.iter_num % cfg.eval_interval == 0 or at_end)
                                 and self.evaluated_at != self.iter_num):
                t_eval = time.time()
                at = self.iter_num
                finished = self.eval_and_checkpoint(at_end)
                t_eval = time.time() - t_eval
                t_log += t_eval  # evals are not training time: keep them out of tokens/s
                eval_seconds += t_eval
                if self.iter_num != at:  # it rolled back
                    losses = []
                    continue
                if not finished:
                    stopped = self.check_stop()
                    self.stop()
                    break
            if at_end:
                break
            loss, grad_norm, lr, reason = self.step()
            if reason is None:
                self.skipped_in_a_row = 0
                losses.append(loss)
            elif self.skip(loss, grad_norm, reason):
                losses = []  # rolled back: those steps are undone
                continue
            if losses and (self.iter_num % cfg.log_interval == 0 or self.iter_num == cfg.max_iters):
                t_log = self.log_step(losses, grad_norm, lr, t_log)
                losses = []
            stopped = self.step_stop  # agreed on by every process in the step's own collective
            if stopped:
                self.stop()
                break
        if self.master and not stopped:
            total = time.time() - self.t0
            # a resumed run says both: where the run stands, and what this process did of it
            steps = (f"{self.iter_num} steps" if self.start_iter == 0 else
                     f"step {self.iter_num}, this run {self.iter_num - self.start_iter} steps ({self.start_iter} -> {self.iter_num})")
            print(f"done: {steps} in {fmt_time(total)} (evals and checkpoints {eval_seconds:.1f} s, "
                  f"{eval_seconds / max(total, 1e-9):.0%}), best val loss {self.best_val_loss:.4f}; "
                  f"checkpoints in {cfg.out_dir}")
        return {"iter_num": self.iter_num, "best_val_loss": self.best_val_loss, "out_dir": cfg.out_dir,
                "stopped_by": stopped, "eval_seconds": eval_seconds}

    def fetch(self):
        # remember where the batch came from: a checkpoint written before it is trained on restarts here
        self.loader_state = self.loader.state_dict()
        self.X, self.Y = self.loader.next_batch()

    def step(self):
        """One optimizer step of micro_steps micro-batches; returns (loss, grad_norm, skip reason)."""
        cfg = self.cfg
        lr = get_lr(self.iter_num, cfg) * self.lr_scale
        for group in self.optimizer.param_groups:  # the schedule scales every group's own base rate
            group["lr"] = group.get("base_lr", cfg.learning_rate) * (lr / cfg.learning_rate if cfg.learning_rate else 0)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.micro_steps):
            distributed.sync_gradients(self.model, self.raw_model, self.world, self.fsdp,
                                       sync=micro == self.micro_steps - 1)
            with self.ctx:  # the loss only: logits kept here would live on through the next forward
                loss = self.model(self.X, self.Y, return_logits=False)[1] / self.micro_steps
            loss_sum += loss.detach()
            self.fetch()  # the next batch, while the GPU works on this one
            self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(),
                                                   cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a sharded norm
            grad_norm = grad_norm.full_tensor()
        # one collective and one device sync per step: the mean loss, and whether any process was asked to
        # stop (a signal), travel together; the skip decision needs the numbers on the host
        numbers = torch.cat([loss_sum.float().view(1), torch.tensor(
            distributed.stop_flags(self.stop_request.signum), device=loss_sum.device)])
        if self.world > 1:
            torch.distributed.all_reduce(numbers)
        numbers[0] /= self.world
        loss_val, norm_val, *flags = torch.cat([numbers[:1], grad_norm.float().view(1).to(numbers.device),
                                                numbers[1:]]).tolist()
        self.step_stop = distributed.stop_signal(flags)
        reason = self.bad_steps.check(loss_val, norm_val, self.scaler.is_enabled())
        if reason is None:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.iter_num += 1
        return loss_val, norm_val, lr, reason

    def log_step(self, losses, grad_norm, lr, t_log):
        now = time.time()
        tok_s = len(losses) * self.tokens_per_iter / max(now - t_log, 1e-9)
        mfu = estimate_mfu(self.flops_per_token, tok_s / self.world, self.device)
        self.train_seconds += now - t_log  # evals excluded (t_log skips them): at iter 1, the step-0 eval is no step
        eta = self.train_seconds / max(self.iter_num - self.start_iter, 1) * max(self.cfg.max_iters - self.iter_num, 0)
        loss = sum(losses) / len(losses)
        if self.master:
            print(f"iter {self.iter_num}/{self.cfg.max_iters}: loss {loss:.4f}, lr {lr:.2e}, {tok_s:,.0f} tok/s"
                  f"{f', mfu {mfu * 100:.1f}%' if mfu is not None else ''}, eta {fmt_time(eta)}")
            self.metrics.log({"iter": self.iter_num, "tokens": self.iter_num * self.tokens_per_iter, "loss": loss,
                              "lr": lr, "grad_norm": grad_norm, "tokens_per_sec": round(tok_s, 1), "mfu": mfu,
                              "time": round(now - self.t0, 3)})
        return now

    def eval_and_checkpoint(self, at_end):
        """Evaluate, log, and save ckpt.pt (and best.pt). Returns False when a stop request cut the eval
        short: the step is then saved unevaluated, and a resume evaluates it first."""
        cfg = self.cfg
        losses = evaluate(self.model, self.eval_loaders, cfg.eval_iters, self.ctx, self.rank, self.world,
                          should_stop=self.check_stop)
        if losses is None:
            return False
        if not cfg.eval_only and not faults.healthy(losses["val"], self.recover_to):
            self.rollback(f"val loss {losses['val']:.4f}" + (f", worse than {self.recover_to:.4f} at the checkpoint"
                                                             if self.recover_to is not None else ""))
            return True
        diverged = None
        try:
            if cfg.sample_tokens > 0 or cfg.eval_tasks:  # NaN weights, named, before they reach a sample or a score
                faults.check_finite_model(self.raw_model)
            sample, task = self.eval_sample(), self.eval_task()
        except faults.Diverged as e:  # NaN shows first in a sample or a task score: the same policy as a bad eval
            diverged, sample, task = str(e), None, None
        diverged = distributed.agree(diverged, self.world)  # under DDP only rank 0 samples: all must roll back
        if diverged is not None:
            if cfg.eval_only:
                raise faults.Diverged(diverged)
            self.rollback(diverged)  # before the eval counts as back on track: the rollbacks keep counting
            return True
        self.evaluated_at, self.val_loss = self.iter_num, losses["val"]
        if self.recover_to is not None:  # back on track
            self.recover_to, self.rollbacks = None, 0
        improved = losses["val"] < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, losses["val"])
        if self.master:
            self.log_eval(losses, improved, sample, task)
        if cfg.eval_only:
            return True
        if improved and self.iter_num > 0:
            self.save(best=True)
        if cfg.always_save_checkpoint or improved or at_end or self.iter_num == 0:
            self.save()  # at step 0 too: the first rollback target
        return True

    def log_eval(self, losses, improved, sample, task):
        """An eval's line, its event in metrics.jsonl (and wandb), and loss.png."""
        cfg = self.cfg
        ppl = math.exp(min(losses["val"], 50))
        print(f"step {self.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
              f"(perplexity {ppl:.2f}){' best' if improved else ''}")
        if sample is not None:
            print(f"sample: {sample!r}")
            self.metrics.log_sample(self.iter_num, sample)
        event = {"iter": self.iter_num, "tokens": self.iter_num * self.tokens_per_iter,
                 "train_loss": losses["train"], "val_loss": losses["val"], "val_ppl": ppl,
                 "train_ppl": math.exp(min(losses["train"], 50)), "time": round(time.time() - self.t0, 3)}
        if "val_by_dataset" in losses:
            event.update({f"val_loss/{n}": v for n, v in zip(self.dataset_names, losses["val_by_dataset"])})
            print("  val loss per dataset: " + ", ".join(f"{n} {v:.4f}" for n, v in
                                                        zip(self.dataset_names, losses["val_by_dataset"])))
        if task is not None:
            event.update({f"{cfg.eval_tasks}_{k}": task[k] for k in ("acc", "acc_norm")})
            print(f"  {cfg.eval_tasks}: acc_norm {task['acc_norm']:.4f}, acc {task['acc']:.4f} ({task['examples']} examples)")
        self.metrics.log(event)
        if cfg.plot:
            self.metrics.plot()

    def eval_task(self):
        """The downstream task's score at an eval (eval_tasks), or None."""
        cfg = self.cfg
        if not cfg.eval_tasks or not (self.master or self.fsdp):  # FSDP: every process takes part in the forwards
            return None
        import hellaswag
        if not hasattr(self, "task_examples"):  # read and tokenized once, at the first eval
            docs = hellaswag.load_docs(cfg.eval_tasks, cfg.eval_tasks_file, cfg.eval_tasks_examples)
            self.task_examples = hellaswag.encode(docs, tokenizer.from_meta(self.meta["tokenizer"]))[0]
        return hellaswag.score(self.raw_model, self.task_examples, cfg.batch_size, self.ctx, self.device)

    def eval_sample(self):
        """A short sample from the model: quality you can read, next to the loss."""
        cfg = self.cfg
        if cfg.sample_tokens <= 0 or not (self.master or self.fsdp):  # FSDP: every process takes part
            return None
        try:
            if not hasattr(self, "tokenizer"):
                self.tokenizer = tokenizer.from_meta(self.meta["tokenizer"])
            t = self.tokenizer
            ids = (t.encode(cfg.sample_prompt) if cfg.sample_prompt else [t.eot_id])[-cfg.block_size:]
        except UserError as e:
            print(f"warning: no samples at evals: {e}")
            self.cfg.sample_tokens = 0
            return None
        # a generator of its own: sampling must not move the training's random state
        g = torch.Generator(device=self.device).manual_seed(cfg.seed)
        try:
            with self.ctx:
                out = self.raw_model.generate([ids], cfg.sample_tokens, temperature=0.8, top_k=200, eot_id=t.eot_id,
                                              generator=g)
        except (RuntimeError, UserError) as e:  # finite weights, non-finite logits (an overflow): diverged too
            if distributed.is_lost_process(e, self.world):  # FSDP: another process died mid-sample
                raise
            raise faults.Diverged(f"the eval sample failed ({str(e).splitlines()[0][:100]})") from None
        return cfg.sample_prompt + t.decode(out[0])

    # -- faults: bad steps, rollbacks, stop requests (policies in faults.py) ---------------------

    def skip(self, loss, grad_norm, reason):
        """A bad step was not applied; too many in a row roll back. Returns whether it rolled back."""
        self.skipped_in_a_row += 1
        if self.master:
            print(f"step {self.iter_num}: skipped ({reason})")
            self.metrics.log({"iter": self.iter_num, "skipped": reason, "loss": loss, "grad_norm": grad_norm})
        if self.skipped_in_a_row >= self.cfg.max_skipped_steps:
            self.rollback(f"{self.cfg.max_skipped_steps} bad steps in a row")
            return True
        return False

    def rollback(self, why):
        """Back to the last checkpoint with the learning rate halved (again for each further rollback).
        Until an eval is back to that checkpoint's val loss, nothing is saved over it; a run that does
        not get back after faults.MAX_ROLLBACKS tries stops with an error, its last good checkpoint intact."""
        path = os.path.join(self.cfg.out_dir, checkpoint.CKPT)
        rollbacks = self.rollbacks + 1
        if rollbacks > faults.MAX_ROLLBACKS:
            raise UserError(f"training keeps failing ({why} at step {self.iter_num}) after rolling back "
                            f"{faults.MAX_ROLLBACKS} times, each with half the learning rate; {path} is the last good "
                            f"checkpoint. Lower learning_rate, raise warmup_iters, or check the data")
        failed_at = self.iter_num
        if not os.path.isfile(path):  # only when the very first eval failed: nothing to go back to
            raise UserError(f"training failed ({why} at step {self.iter_num}) before its first checkpoint: the "
                            f"model is not usable from the start; check --init_from and the data, or lower "
                            f"learning_rate")
        self.load_state_dict(checkpoint.load(path, shards=()))
        self.rollbacks = rollbacks
        self.recover_to = self.val_loss  # None for checkpoints from before val_loss was saved: no check
        self.lr_scale *= 0.5 ** self.rollbacks
        self.skipped_in_a_row = 0
        self.fetch()
        if self.master:
            print(f"{why} at step {failed_at}: rolled back to step {self.iter_num} ({path}) with the learning "
                  f"rate scaled by {self.lr_scale:g}")
            self.metrics.log({"iter": self.iter_num, "rollback_from": failed_at, "lr_scale": self.lr_scale})

    def check_stop(self):
        """The signal that asked to stop (under DDP: that any process got), or 0."""
        return distributed.any_process(self.stop_request.signum or 0, self.world, self.device)

    def stop(self):
        """A signal asked to stop: save where we are (unless a rollback is still being recovered from:
        then the last good checkpoint stays), and say how to continue."""
        cfg, path = self.cfg, os.path.join(self.cfg.out_dir, checkpoint.CKPT)
        if self.recover_to is None:
            self.save()
        if self.master:
            saved = (f"saved {path}" if self.recover_to is None else
                     f"not saved while recovering from a rollback; {path} is the last good checkpoint")
            print(f"stopped at step {self.iter_num}: {saved}; continue with --init_from=resume --out_dir={cfg.out_dir}")

    # -- checkpoints: the whole run's state ------------------------------------------------------

    def state_dict(self, full=True):
        """The checkpoint. Under FSDP every process must call this: it gathers the weights for best.pt
        (full False); ckpt.pt's model and optimizer state are written sharded instead (save)."""
        sharded = full and self.fsdp
        state = {**({} if sharded else {"model": distributed.model_state(self.raw_model)}),
                 "model_args": self.model_args, "config": config_dict(self.cfg), "tokenizer": self.meta["tokenizer"],
                 "iter_num": self.iter_num, "best_val_loss": self.best_val_loss, "val_loss": self.val_loss,
                 "evaluated_at": self.evaluated_at, "data_fingerprint": self.data_fingerprint}
        if full:
            rng = {"torch": distributed.gather(torch.get_rng_state(), self.world)}
            if self.device_type == "cuda":
                rng["cuda"] = distributed.gather(torch.cuda.get_rng_state(self.device), self.world)
            # optimizer state keyed by parameter name, so a checkpoint moves between DDP and FSDP
            if not sharded:
                state["optimizer"] = distributed.optimizer_state(self.raw_model, self.optimizer)
            state.update(scaler=self.scaler.state_dict(), loader=self.loader_state, rng=rng, lr_scale=self.lr_scale,
                         recent_losses=list(self.bad_steps.recent), rollbacks=self.rollbacks,
                         recover_to=self.recover_to)
        return state

    def load_state_dict(self, ckpt):
        if "sharded" in ckpt:  # written by FSDP: each process reads its part, or one process all of it
            folder = checkpoint.shards_dir(os.path.join(self.cfg.out_dir, checkpoint.CKPT), ckpt)
            if self.fsdp:
                distributed.load_sharded(self.raw_model, self.optimizer, folder)
            else:
                ckpt = {**ckpt, **checkpoint.read_shards(folder, ("model", "optimizer"))}
        if "model" in ckpt:
            distributed.load_model_state(self.raw_model, ckpt["model"])
            distributed.load_optimizer_state(self.raw_model, self.optimizer, ckpt["optimizer"])
        for group, hyper in zip(self.optimizer.param_groups, self.hyper):
            group.update(hyper)  # --learning_rate, --weight_decay, --beta1/2 on resume take effect
        if ckpt.get("scaler"):  # a bf16 or fp32 run saves an empty one: a float16 resume starts its scale afresh
            self.scaler.load_state_dict(ckpt["scaler"])
        self.loader.load_state_dict(ckpt["loader"])
        self.loader_state = self.loader.state_dict()
        self.iter_num, self.best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        self.lr_scale = ckpt.get("lr_scale", 1.0)
        self.val_loss = ckpt.get("val_loss")
        self.evaluated_at = ckpt.get("evaluated_at", self.iter_num)  # older checkpoints: saved after their eval
        self.rollbacks, self.recover_to = ckpt.get("rollbacks", 0), ckpt.get("recover_to")
        self.bad_steps = faults.BadSteps(self.cfg.spike_threshold, ckpt.get("recent_losses", ()))
        states = ckpt["rng"]["torch"]
        # a row of the saved (world, n) table is a view into it; set_rng_state needs a tensor of its own
        if len(states) == self.world:
            torch.set_rng_state(states[self.rank].clone())
        else:  # another number of processes: the data order continues, dropout draws anew
            torch.manual_seed(self.cfg.seed + self.rank + self.iter_num)
        if self.device_type == "cuda" and len(ckpt["rng"].get("cuda", [])) == self.world:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"][self.rank].clone(), self.device)

    def save(self, best=False):
        """Write ckpt.pt (or best.pt, weights only); with keep_last_n, keep older ckpt.pt's by hard link."""
        state = self.state_dict(full=not best)
        out = self.cfg.out_dir
        if self.fsdp and not best:  # the shards first, in a new folder; ckpt.pt, which names it, after
            names = os.listdir(out)
            folder = distributed.agree(next(f"shards_{self.iter_num:07d}.{k}" for k in range(len(names) + 1)
                                            if f"shards_{self.iter_num:07d}.{k}" not in names), self.world)
            distributed.save_sharded(self.raw_model, self.optimizer, os.path.join(out, folder))
            state["sharded"] = folder
        if not self.master:
            return
        path = os.path.join(out, checkpoint.BEST if best else checkpoint.CKPT)
        checkpoint.save(state, path)
        if not best and self.cfg.keep_last_n:
            numbered = os.path.join(out, f"ckpt_{self.iter_num:07d}.pt")
            if os.path.exists(numbered):
                os.remove(numbered)
            os.link(path, numbered)  # costs no space until ckpt.pt is replaced
            old = sorted(f for f in os.listdir(out) if checkpoint.numbered(f))
            for f in old[:-self.cfg.keep_last_n]:
                os.remove(os.path.join(out, f))
        shards = [n for n in os.listdir(out) if checkpoint.SHARDS.fullmatch(n)] if not best else []
        if shards:  # sharded states no checkpoint names any more (after a save, or a resume without FSDP)
            keep = checkpoint.referenced_shards(out)
            for name in shards:
                if name not in keep:
                    shutil.rmtree(os.path.join(out, name), ignore_errors=True)


def train(cfg, overrides=None):
    """Train as cfg says; returns a summary dict. overrides: the keys the user set explicitly
    (they win over a resumed checkpoint's config)."""
    return Trainer(cfg, overrides).run()


def main(argv=None):
    overrides = parse_overrides(TrainConfig, argv, prog="train.py")
    result = train(TrainConfig(**overrides), overrides)
    code = 128 + result["stopped_by"] if result["stopped_by"] else 0  # the shell's "ended by signal N", after a save
    if distributed.world_size() > 1:
        # under torchrun, leave without the interpreter's teardown: there, gloo's threads can abort a process
        # whose run is complete ("terminate called without an active exception": 1 run of the DDP test in 15
        # on this project's CI machine). Every file is closed and the process group destroyed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run(main)

"""
Many processes (torchrun), in one place: joining the process group, wrapping the model for DDP or
FSDP2, full (unsharded) state dicts for checkpoints, and the few collectives train.py needs. With one
process every function here is a no-op or the plain single-process thing.
"""

import os

import torch

from configurator import UserError


def setup(cfg):
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


def finish(world):
    """Let rank 0 finish writing before any process leaves, then leave the process group."""
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def wrap(model, world, fsdp, use_compile, device, dtype):
    """torch.compile, then DDP or FSDP across processes; returns what the training step calls."""
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        # bf16: gather the weights in 16 bits (half the traffic; the shards and the optimizer stay fp32),
        # reduce-scatter the gradients in fp32, whose sums over many processes keep their precision
        mp = MixedPrecisionPolicy(torch.bfloat16, torch.float32) if dtype == "bfloat16" else MixedPrecisionPolicy()
        for block in model.transformer.h:  # each block gathers its weights only while it runs
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    if use_compile:
        model = torch.compile(model)
    if world > 1 and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[device] if device.startswith("cuda") else None)
    return model


def sync_gradients(model, raw_model, world, fsdp, sync):
    """All-reduce (DDP) or reduce-scatter (FSDP) the gradients in this micro-batch's backward or not:
    only the last micro-batch of a step needs to."""
    if world > 1:
        if fsdp:
            raw_model.set_requires_gradient_sync(sync)
        else:
            model.require_backward_grad_sync = sync


def mean(t, world):
    """t averaged over the processes (in place)."""
    if world > 1:
        torch.distributed.all_reduce(t)
        t /= world
    return t


def any_process(flag, world, device):
    """The largest of every process's integer flag: a signal that reached any of them stops all."""
    if world == 1:
        return flag
    t = torch.tensor([flag], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def gather(t, world):
    """Every process's copy of a CPU tensor, stacked (one row per rank)."""
    if world == 1:
        return t[None]
    parts = [None] * world
    torch.distributed.all_gather_object(parts, t)  # works on every backend, and these are a few KB
    return torch.stack(parts)


# full state dicts, keyed by parameter name: a checkpoint moves between one process, DDP and FSDP
def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(raw_model):
    """Under FSDP every process must call this (it gathers the shards)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(raw_model, options=_options())


def optimizer_state(raw_model, optimizer):
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(raw_model, optimizer, options=_options())


def load_model_state(raw_model, state):
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    set_model_state_dict(raw_model, state, options=_options())


def load_optimizer_state(raw_model, optimizer, state):
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    set_optimizer_state_dict(raw_model, optimizer, state, options=_options())

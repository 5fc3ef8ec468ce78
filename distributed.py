"""
Many processes (torchrun), in one place: joining the process group, wrapping the model for DDP or
FSDP2, full (unsharded) state dicts for checkpoints, and the few collectives train.py needs. With one
process every function here is a no-op or the plain single-process thing.
"""

import datetime
import os
import re
import signal
import socket
import time

import torch

from configurator import UserError, os_error

peers = []  # (host, pid) of every rank, in rank order: who died, when a collective fails


def world_size():
    """The number of processes torchrun started (1 without torchrun), read before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(cfg):
    """(rank, local_rank, world_size); under torchrun this joins the process group. A collective that
    waits longer than cfg.dist_timeout seconds for a process fails (a hung or lost rank), instead of
    waiting forever."""
    world = world_size()
    if world <= 1:
        return 0, 0, 1
    import torch.distributed as dist
    rank, local_rank = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK"))
    check_world(cfg, world)
    backend = cfg.backend
    if backend == "nccl" and (cfg.device.startswith(("cpu", "mps")) or not torch.cuda.is_available()):
        backend = "gloo"  # NCCL is GPU-only
    timeout = datetime.timedelta(seconds=cfg.dist_timeout)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's own store, under a name of this attempt's: after torchrun --max-restarts restarts the
        # group, the workers' env:// rendezvous reads the addresses the dead attempt left there and fails
        # ("connectFullMesh ... Connection refused", PyTorch 2.13)
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                              timeout=timeout)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"nanogpt/attempt_{attempt}", store),
                                rank=rank, world_size=world, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, timeout=timeout)
    peers[:] = [None] * world
    dist.all_gather_object(peers, (socket.gethostname(), os.getpid()))
    return rank, local_rank, world


def check_world(cfg, world):
    """What the number of processes must agree with, checked before the process group starts."""
    if cfg.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be a multiple of "
                        f"the number of processes ({world}): it counts micro-batches over all of them")


def finish(world, ok=True):
    """Let rank 0 finish writing before any process leaves, then leave the process group. After a lost
    process (ok False) there is no one to wait for."""
    if world > 1 and torch.distributed.is_initialized():
        if ok:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# a process that died: which one, in one line

def is_lost_process(e, world):
    """Whether an exception is a collective failing because another process is gone (killed, crashed,
    or silent for longer than dist_timeout), rather than a bug or a user mistake."""
    if world <= 1 or not isinstance(e, RuntimeError):
        return False
    if isinstance(e, torch.distributed.DistError):
        return True
    text = str(e).lower()
    return any(w in text for w in ("connection closed by peer", "connection reset by peer", "broken pipe",
                                   "timed out", "gloo", "nccl"))


def _alive(host, pid):
    if host != socket.gethostname():
        return None  # another node's process: not ours to look at
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie is a dead process
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except OSError:
            return None


def lost_process_error(rank, e):
    """The UserError for a lost process: it names the rank(s) that died, where this node can see them;
    the lowest-ranked survivor says it, the others stay silent (configurator.run)."""
    deadline = time.time() + 3  # a killed process's sockets close a moment before it is gone from /proc
    while True:
        alive = [_alive(host, pid) if r != rank else True for r, (host, pid) in enumerate(peers)]
        dead = [r for r, a in enumerate(alive) if a is False]
        if dead or time.time() > deadline:
            break
        time.sleep(0.05)
    first_survivor = next((r for r, a in enumerate(alive) if a is not False), rank)
    who = (f"rank {dead[0]} (process {peers[dead[0]][1]})" if len(dead) == 1 else
           f"ranks {', '.join(map(str, dead))}" if dead else "another process (on another node, or hung)")
    why = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", str(e).strip().splitlines()[0] if str(e).strip() else "")
    why = why.split(". ")[0][:120] or type(e).__name__  # gloo's "Read error [addr]: Connection reset by peer"
    err = UserError(f"{who} stopped answering, so rank {rank} stopped too ({why}). Checkpoints already written are "
                    f"intact: continue with --init_from=resume, or run under torchrun --max-restarts=N with "
                    f"--init_from=auto to restart by itself")
    err.every_rank = rank != first_survivor  # one line for the whole group
    return err


def wrap(model, world, fsdp, use_compile, device, dtype):
    """torch.compile, then DDP or FSDP across processes; returns what the training step calls.
    Under FSDP each block is compiled on its own before it is sharded: the hooks FSDP puts around a
    block (gather the weights, free them) then sit between compiled graphs instead of breaking one."""
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        # bf16: gather the weights in 16 bits (half the traffic; the shards and the optimizer stay fp32),
        # reduce-scatter the gradients in fp32, whose sums over many processes keep their precision
        mp = MixedPrecisionPolicy(torch.bfloat16, torch.float32) if dtype == "bfloat16" else MixedPrecisionPolicy()
        for block in model.transformer.h:  # each block gathers its weights only while it runs
            if use_compile:
                block.compile()
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    if use_compile:
        model = torch.compile(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # no buffer broadcast: the only buffers are the rotary tables, the same on every process by
        # construction; broadcasting them made every forward a collective
        import inspect
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                   else {"broadcast_buffers": False})  # the older name, deprecated in newer PyTorch
        model = DDP(model, device_ids=[device] if device.startswith("cuda") else None, **no_sync)
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


def stop_flags(signum):
    """A stop request as numbers that add up over processes: (SIGINT seen, SIGTERM seen)."""
    return [float(signum == signal.SIGINT), float(signum == signal.SIGTERM)]


def stop_signal(flags):
    """The signal that stops every process, from the summed stop_flags: SIGTERM wins (a scheduler's)."""
    return signal.SIGTERM if flags[1] > 0 else signal.SIGINT if flags[0] > 0 else 0


def any_process(flag, world, device):
    """The signal that reached any process (0: none), agreed on by all: a signal to one stops all."""
    if world == 1:
        return flag
    t = torch.tensor(stop_flags(flag), device=device)
    torch.distributed.all_reduce(t)
    return stop_signal(t.tolist())


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


# sharded checkpoints (FSDP): every process writes and reads its own part; no process holds the whole state
def checkpoint_io(run, what, folder, intact):
    """run() a torch.distributed.checkpoint save or load; its CheckpointException (a BaseException that
    wraps each rank's error with a traceback) becomes one line: a fault of the disk names it, a lost
    process goes on to the lost-process line, anything else says what failed."""
    from torch.distributed.checkpoint.api import CheckpointException
    try:
        return run()
    except CheckpointException as e:
        causes = [failure[0] for failure in (e.failures or {}).values()]
        disk = next((c for c in causes if isinstance(c, OSError)), None)
        if disk is not None:  # every process meets it (DCP gathers the outcome): one line for all
            err = UserError(f"cannot {what} the sharded checkpoint {folder}: {os_error(disk)} ({intact})")
            err.every_rank = True
            raise err from None
        first = causes[0] if causes else None
        if isinstance(first, RuntimeError) and is_lost_process(first, world_size()):
            raise first from None
        why = f"{type(first).__name__}: {str(first).strip().splitlines()[0][:150]}" if first is not None else str(e)[:150]
        raise UserError(f"cannot {what} the sharded checkpoint {folder} ({why}; {intact})") from None


def save_sharded(raw_model, optimizer, folder):
    """Every process must call this: the model and optimizer state, each process its shards, in folder."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_sd, optim_sd = get_state_dict(raw_model, optimizer)
    checkpoint_io(lambda: dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=folder), "write",
                   folder, "the previous ckpt.pt and the state it names are intact")


def load_sharded(raw_model, optimizer, folder):
    """Every process must call this: each reads the parts of folder its shards need (any number of
    processes may have written it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_sd, optim_sd = get_state_dict(raw_model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    checkpoint_io(lambda: dcp.load(state, checkpoint_id=folder), "read", folder,
                   "nothing was changed: resume from an older checkpoint, ckpt_NNNNNNN.pt with --keep_last_n")
    set_state_dict(raw_model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def agree(value, world):
    """Rank 0's value of a small Python object, on every process."""
    if world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]

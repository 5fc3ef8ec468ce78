"""
Batches from token shards, sampled without replacement, deterministically, resumably.

An epoch cuts every shard into windows of block_size+1 tokens (x = w[:-1],
y = w[1:]) starting at a random phase in [0, block_size), so the window
boundaries move from epoch to epoch, then visits all windows in a random
order. Both come from (seed, epoch) alone, so the state is two integers
(epoch, position) that go into the checkpoint: resume continues exactly
where the run stopped, with nothing replayed or skipped.
"""

import os

import numpy as np
import torch

from configurator import UserError
from shards import open_shard, shard_paths


class DataLoader:

    def __init__(self, data_dir, split, batch_size, block_size, seed=0, rank=0, world_size=1, device="cpu"):
        paths = shard_paths(data_dir, split)
        if not paths:
            raise UserError(f"no {split} shards in {data_dir}: re-run prepare.py (with --val_fraction > 0 "
                            f"if the source has no validation split)")
        self.shards = [open_shard(p) for p in paths]
        self.n_tokens = sum(len(s) for s in self.shards)
        if all(len(s) < block_size + 1 for s in self.shards):
            raise UserError(f"the {split} split of {data_dir} has {self.n_tokens} tokens, too few for one "
                            f"window of block_size+1 = {block_size + 1}: lower block_size or add data")
        self.split, self.B, self.T, self.seed = split, batch_size, block_size, seed
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.epoch, self.pos = 0, 0
        self._windows_epoch, self._windows = None, None

    def windows(self, epoch):
        """All windows of an epoch as an (n, 2) array of (shard index, start), in visiting order."""
        if self._windows_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            parts = []
            for i, shard in enumerate(self.shards):
                phase = int(rng.integers(self.T)) if len(shard) > 2 * self.T + 1 else 0
                starts = np.arange(phase, len(shard) - self.T, self.T, dtype=np.int64)
                parts.append(np.stack([np.full_like(starts, i), starts], axis=1))
            w = np.concatenate(parts)
            self._windows = w[rng.permutation(len(w))]
            self._windows_epoch = epoch
        return self._windows

    def _take(self, n):
        """The next n windows of the stream, crossing into the next epoch when this one runs out."""
        out = []
        while n > 0:
            w = self.windows(self.epoch)
            chunk = w[self.pos:self.pos + n]
            out.append(chunk)
            n -= len(chunk)
            self.pos += len(chunk)
            if self.pos >= len(w):
                self.epoch, self.pos = self.epoch + 1, 0
        return np.concatenate(out)

    def next_batch(self):
        """(x, y) of shape (batch_size, block_size), int64, on the loader's device."""
        # every rank advances through the same global stream and keeps its own slice of it
        w = self._take(self.B * self.world_size)[self.rank * self.B:(self.rank + 1) * self.B]
        return self._to_device(np.stack([self.shards[s][start:start + self.T + 1] for s, start in w]))

    def _to_device(self, batch):
        batch = torch.from_numpy(batch.astype(np.int64))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return batch[:, :-1], batch[:, 1:]

    def spread_batches(self, n_batches):
        """n_batches batches whose windows are spread evenly over the whole split: a fixed,
        stratified sample, so an estimate from a few batches tracks the loss on all of it."""
        sizes = np.array([max(len(s) - self.T, 0) for s in self.shards])  # window starts per shard
        points = np.arange(n_batches * self.B) * (sizes.sum() / (n_batches * self.B))
        shard = np.searchsorted(np.cumsum(sizes), points, side="right")
        start = (points - np.concatenate([[0], np.cumsum(sizes)])[shard]).astype(np.int64)
        for k in range(n_batches):
            rows = range(k * self.B, (k + 1) * self.B)
            batch = np.stack([self.shards[shard[i]][start[i]:start[i] + self.T + 1] for i in rows])
            yield self._to_device(batch)

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "block_size": self.T}

    def load_state_dict(self, state):
        if state.get("block_size", self.T) != self.T:
            # windows of another length are another stream: start its epoch over rather than misalign
            self.epoch, self.pos = int(state["epoch"]) + 1, 0
            return
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.seed = int(state.get("seed", self.seed))


def dataset_dir(dataset, data_root="data"):
    """A dataset name means data/<name>/; a path to an existing folder is also accepted."""
    named = os.path.join(data_root, dataset)
    return dataset if not os.path.isdir(named) and os.path.isdir(dataset) else named

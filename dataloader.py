"""
Batches from token shards, sampled without replacement, deterministically, resumably.

An epoch cuts every shard into windows of block_size+1 tokens (x = w[:-1],
y = w[1:]) starting at a random phase in [0, block_size), so the window
boundaries move from epoch to epoch, then visits all windows in a random
order. Both come from (seed, epoch) alone, so the state is two integers
(epoch, position) that go into the checkpoint: resume continues exactly
where the run stopped, with nothing replayed or skipped.

Several datasets mix by weight: a weighted round robin (no randomness, so
nothing more to save than a count per dataset) decides which dataset each
window of the stream comes from.
"""

import difflib
import os

import numpy as np
import torch

from configurator import UserError
from shards import check_window, open_shard, read_header, shard_paths


class WindowStream:
    """The windows of one dataset's split, epoch after epoch."""

    def __init__(self, data_dir, split, block_size, seed):
        paths = shard_paths(data_dir, split)
        if not paths:
            raise UserError(f"no {split} shards in {data_dir}: re-run prepare.py (with --val_fraction > 0 "
                            f"if the source has no validation split)")
        self.paths, self.shards = paths, [open_shard(p) for p in paths]
        self.tops = [read_header(p)[2] for p in paths]  # each shard's largest id, checked against the vocabulary
        self.n_tokens = sum(len(s) for s in self.shards)
        if all(len(s) < block_size + 1 for s in self.shards):
            raise UserError(f"the {split} split of {data_dir} has {self.n_tokens} tokens, too few for one "
                            f"window of block_size+1 = {block_size + 1}: lower block_size or add data")
        self.T, self.seed = block_size, seed
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

    def take(self, n):
        """The next n windows, crossing into the next epoch when this one runs out."""
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

    def tokens(self, window):
        s, start = window
        return self.shards[s][start:start + self.T + 1]

    def check(self, window):
        """Refuse a window with an id past its shard header's largest (which preflight checked against the
        vocabulary): the file changed after it was checked, or its data is damaged."""
        s, start = window
        check_window(self.shards[s][start:start + self.T + 1], self.tops[s], self.paths[s], start)

    def spread(self, n):
        """n windows spread evenly over the whole split, from its first token."""
        sizes = np.array([max(len(s) - self.T, 0) for s in self.shards])  # window starts per shard
        points = np.arange(n) * (sizes.sum() / n)
        shard = np.searchsorted(np.cumsum(sizes), points, side="right")
        start = (points - np.concatenate([[0], np.cumsum(sizes)])[shard]).astype(np.int64)
        return np.stack([shard, start], axis=1)

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "block_size": self.T}

    def load_state_dict(self, state):
        if state.get("block_size", self.T) != self.T:
            # windows of another length are another stream: start its epoch over rather than misalign
            self.epoch, self.pos = int(state["epoch"]) + 1, 0
            return
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.seed = int(state.get("seed", self.seed))


class DataLoader:
    """Batches of windows from one dataset, or from several mixed by weight. Every process walks the
    same global stream of windows and keeps its own slice, so the global batch and the data order do
    not depend on the number of processes."""

    def __init__(self, data_dirs, split, batch_size, block_size, seed=0, rank=0, world_size=1, device="cpu",
                 weights=None):
        data_dirs = [data_dirs] if isinstance(data_dirs, str) else list(data_dirs)
        self.streams = [WindowStream(d, split, block_size, seed + i) for i, d in enumerate(data_dirs)]
        w = np.ones(len(data_dirs)) if weights is None else np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self.counts = [0] * len(data_dirs)  # windows taken from each dataset so far
        self.top = max(max(s.tops) for s in self.streams)  # the largest id any header records
        self.split, self.B, self.T = split, batch_size, block_size
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)

    @property
    def n_tokens(self):
        return sum(s.n_tokens for s in self.streams)

    def _schedule(self, n):
        """Which dataset each of the next n windows comes from: the one furthest behind its share."""
        out = []
        for _ in range(n):
            total = sum(self.counts) + 1
            j = int(np.argmax(self.weights * total - np.array(self.counts)))
            self.counts[j] += 1
            out.append(j)
        return out

    def next_batch(self):
        """(x, y) of shape (batch_size, block_size), int64, on the loader's device."""
        n = self.B * self.world_size
        if len(self.streams) == 1:
            source = [0] * n
            self.counts[0] += n
        else:
            source = self._schedule(n)
        taken = {j: iter(self.streams[j].take(source.count(j))) for j in set(source)}
        windows = [(j, next(taken[j])) for j in source]  # each dataset's windows stay in its own order
        mine = windows[self.rank * self.B:(self.rank + 1) * self.B]
        return self._to_device(self._checked(np.stack([self.streams[j].tokens(w) for j, w in mine]), mine))

    def spread_batches(self, n_batches):
        """Batches of windows spread evenly over each dataset's split (n_batches in all, shared by weight):
        a fixed, stratified sample, so an estimate from a few batches tracks the loss on all of it.
        Yields (dataset index, x, y)."""
        for j, stream in enumerate(self.streams):
            n = n_batches if len(self.streams) == 1 else max(1, round(n_batches * self.weights[j]))
            windows = stream.spread(n * self.B)
            for k in range(n):
                rows = [(j, w) for w in windows[k * self.B:(k + 1) * self.B]]
                x, y = self._to_device(self._checked(np.stack([stream.tokens(w) for _, w in rows]), rows))
                yield j, x, y

    def _checked(self, batch, rows):
        """The batch, once no token id in it is past the largest any shard header records: one max over the
        batch (microseconds), and only when it fails a look at each window for the one-line error. So no id
        past the vocabulary reaches the model, whatever happened to a shard after preflight checked it."""
        if len(batch) and int(batch.max()) > self.top:
            for j, w in rows:
                self.streams[j].check(w)
        return batch

    def _to_device(self, batch):
        batch = torch.from_numpy(batch.astype(np.int64))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self):
        if len(self.streams) == 1:
            return self.streams[0].state_dict()
        return {"streams": [s.state_dict() for s in self.streams], "counts": list(self.counts)}

    def load_state_dict(self, state):
        if "streams" not in state:
            state = {"streams": [state], "counts": [0]}
        if len(state["streams"]) != len(self.streams):
            raise UserError(f"the checkpoint's data loader read {len(state['streams'])} datasets, this run has "
                            f"{len(self.streams)}: resume with the same dataset setting")
        for s, st in zip(self.streams, state["streams"]):
            s.load_state_dict(st)
        self.counts = [int(c) for c in state["counts"]]


def dataset_dir(dataset, data_root="data"):
    """A dataset name means data/<name>/; a path to an existing folder is also accepted. A name that is
    neither, but close to a dataset prepared in data_root, is a one-line error that says which, as a
    mistyped key is (configurator)."""
    named = os.path.join(data_root, dataset)
    if not os.path.isdir(named) and os.path.isdir(dataset):
        return dataset
    if not os.path.isdir(named) and os.path.isdir(data_root):
        prepared = [d for d in os.listdir(data_root) if os.path.isfile(os.path.join(data_root, d, "meta.json"))]
        close = difflib.get_close_matches(dataset, prepared, n=1, cutoff=0.6)
        if close:
            raise UserError(f"dataset folder {named} not found (did you mean '{close[0]}'?); a new dataset is "
                            f"prepared first: python prepare.py --input YOUR_FILES --name {dataset}")
    return named

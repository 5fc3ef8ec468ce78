"""
Generation: continue prompts one token at a time, with a KV cache so each new token costs one
position's forward instead of the whole context's.

GPT inherits Generation, so `model.generate(prompts, 100)` reads as in nanoGPT while model.py keeps
only the model: a reader of the architecture needs nothing here, and training never runs it. The
attention layers take the cache as a plain argument and call only its begin, update and advance
(nanochat splits its engine.py from gpt.py the same way).

Host syncs: on a GPU, every read of a device value by the host (`.item()`, `.tolist()`, `int(t)`,
`bool(t)`) waits for all queued work, so a token that costs one read per layer leaves the GPU idle
between layers. Everything that decides a shape here (the cache's lengths, which rows are full or
finished) is kept on the host as well, so a generated token costs exactly one read: its sampled
ids, with a flag per row for non-finite probabilities (tests/test_generate.py counts them).
"""

import torch
from torch.nn import functional as F

from configurator import UserError


class KVCache:
    """The keys and values of every layer for a batch of sequences, so generating a token costs one
    position's forward instead of the whole context's. Each row has its own length: prompts of
    different lengths decode together, each at its own position."""

    def __init__(self, config, batch_size, device):
        self.n_layer, self.block_size = config.n_layer, config.block_size
        self.k = [None] * config.n_layer  # (B, n_head, block_size, head_size), allocated at first use
        self.v = [None] * config.n_layer
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # on the device, for positions
        self.sizes = [0] * batch_size  # the same lengths on the host: shapes and refills never read the device
        self._parent, self._i = None, None
        self._step = None  # this forward's (positions, rows, mask), shared by every layer

    def begin(self, T):
        """Once per forward, before the layers: the (B, T) positions of the T tokens about to be fed,
        and the longest row's length after them (a Python int). The mask that lets each query see its
        own row's past only is built here once, for all layers."""
        device = self.lengths.device
        pos = self.lengths[:, None] + torch.arange(T, device=device)
        end = max(self.sizes) + T
        rows = torch.arange(len(self.sizes), device=device)[:, None]
        mask = torch.arange(end, device=device) <= pos[:, None, :, None]  # (B, 1, T, end)
        self._step = (pos, rows, mask)
        return pos, end

    def update(self, layer, k, v):
        """Store this step's k, v (B, nh, T, hs) at each row's positions; return the keys and values
        to attend over and the mask (from begin)."""
        if self.k[layer] is None:
            self._allocate(layer, k)
        pos, rows, mask = self._step
        self.k[layer][rows, :, pos] = k.transpose(1, 2)  # advanced indexing: (B, T, nh, hs)
        self.v[layer][rows, :, pos] = v.transpose(1, 2)
        S = mask.size(-1)
        return self.k[layer][:, :, :S], self.v[layer][:, :, :S], mask

    def _allocate(self, layer, like):
        if self._parent is not None:  # a row view: storage lives in the parent, shared
            self._parent._allocate(layer, like)
            self.k[layer] = self._parent.k[layer][self._i:self._i + 1]
            self.v[layer] = self._parent.v[layer][self._i:self._i + 1]
            return
        _, nh, _, hs = like.shape
        self.k[layer] = like.new_zeros(len(self.sizes), nh, self.block_size, hs)
        self.v[layer] = like.new_zeros(len(self.sizes), nh, self.block_size, hs)

    def advance(self, T):
        self.lengths += T
        self._set_sizes([n + T for n in self.sizes])

    def reset(self):
        """Empty every row (a row view: its row), to fill it again from text."""
        self.lengths.zero_()
        self._set_sizes([0] * len(self.sizes))

    def _set_sizes(self, sizes):
        self.sizes = sizes
        if self._parent is not None:  # the device lengths are a view of the parent's; the host ones are not
            self._parent.sizes[self._i] = sizes[0]

    def row(self, i):
        """A one-row cache that shares row i's storage, to fill or refill one sequence alone."""
        view = KVCache.__new__(KVCache)
        view.n_layer, view.block_size = self.n_layer, self.block_size
        view.k = [None if t is None else t[i:i + 1] for t in self.k]
        view.v = [None if t is None else t[i:i + 1] for t in self.v]
        view.lengths = self.lengths[i:i + 1]  # a view: advancing it advances row i
        view.sizes = [self.sizes[i]]
        view._parent, view._i, view._step = self, i, None
        return view


def _not_finite(logits):
    """(B,) bool: rows whose softmax is not a probability distribution (a NaN, a +inf, or all -inf)."""
    return ~torch.isfinite(F.softmax(logits.float(), dim=-1)).all(dim=-1)


def next_tokens(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row from (B, vocab) logits, and a (B,) bool flag for the rows whose logits or
    probabilities are not finite (their token is meaningless), without reading anything back to the
    host: the caller reads both at once. torch.multinomial never sees a NaN (on a GPU that is a
    device-side assert that kills the process). temperature 0 is greedy; top_k keeps the k most likely
    tokens; top_p keeps the smallest set whose probability reaches p (nucleus sampling)."""
    if temperature == 0:
        return logits.argmax(dim=-1), _not_finite(logits)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the ones before it already reach top_p (so the first token always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[:, 0] = False  # even when top_p rounds to 0 in float32 (a tiny --top_p)
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = F.softmax(logits, dim=-1)
    # a NaN or +inf logit, or a row all -inf, survives the tempering, top_k and top_p into probs (NaN there);
    # so does a temperature so small that the logits overflow: one check of probs covers them all
    bad = ~torch.isfinite(probs).all(dim=-1)
    probs = probs.masked_fill(bad[:, None], 1.0)  # any valid row: the flag makes the caller raise
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1), bad


def non_finite_error(temperature, n):
    return UserError(f"the model's next-token probabilities are not finite (NaN or inf) at generated token {n}"
                     + (f" with temperature={temperature}: try a larger temperature, or" if temperature else ":")
                     + " the weights may have diverged (check the run's losses), or float16 overflowed"
                     " (try --dtype=bfloat16 or float32)")


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row from (B, vocab) logits (next_tokens); a UserError when a row's probabilities
    are not finite."""
    tokens, bad = next_tokens(logits, temperature, top_k, top_p, generator)
    if bool(bad.any()):
        raise non_finite_error(temperature, 1)
    return tokens


class Generation:
    """generate() and generate_stream() for a GPT (model.py); they use its config, forward and lm_head.
    A mixin rather than functions of the model, so callers and tests keep nanoGPT's model.generate()."""

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eot_id=None,
                 use_cache=True, generator=None):
        """Continue each prompt (a list of token lists, or a (B, T) tensor); returns the new tokens of
        each, without the end-of-text token that stops a row early."""
        out = [[] for _ in range(len(prompts))]
        for step in self._steps(prompts, max_new_tokens, temperature, top_k, top_p, eot_id, use_cache, generator):
            for i, t in enumerate(step):
                if t >= 0 and t != eot_id:
                    out[i].append(t)
        return out

    @torch.no_grad()
    def generate_stream(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eot_id=None,
                        use_cache=True, generator=None):
        """Yield a (B,) CPU tensor of next tokens per step; a row that has produced eot_id yields -1 from
        then on, and the stream ends when every row has. Past block_size, the cache keeps the newest
        half of the context and refills, while full recomputation slides a block_size window."""
        steps = self._steps(prompts, max_new_tokens, temperature, top_k, top_p, eot_id, use_cache, generator)
        try:
            for step in steps:
                yield torch.tensor(step)
        finally:
            steps.close()  # a caller that stops early (sample.py's stop strings) puts the model back in its mode

    @torch.no_grad()
    def _steps(self, prompts, max_new_tokens, temperature, top_k, top_p, eot_id, use_cache, generator):
        """generate_stream's steps as lists of ints: one device->host read per step."""
        if isinstance(prompts, torch.Tensor):
            prompts = prompts.tolist()
        was_training = self.training
        self.eval()
        device = self.lm_head.weight.device
        seqs = [list(p)[-self.config.block_size:] for p in prompts]
        if any(len(s) == 0 for s in seqs):
            raise ValueError("empty prompt: start from the end-of-text token instead")
        B = len(seqs)
        done = [False] * B
        cache = KVCache(self.config, B, device) if use_cache else None
        try:
            logits = self._next_logits(seqs, cache, refill=range(B))
            for n in range(max_new_tokens):
                nxt, bad = next_tokens(logits, temperature, top_k, top_p, generator)
                tokens, bad = torch.stack([nxt, bad.to(nxt.dtype)]).tolist()  # the step's one read
                if any(b and not d for b, d in zip(bad, done)):
                    raise non_finite_error(temperature, n + 1)
                tokens = [-1 if d else t for t, d in zip(tokens, done)]
                yield tokens
                if eot_id is not None:
                    done = [d or t == eot_id for d, t in zip(done, tokens)]
                    if all(done):
                        break
                for s, t in zip(seqs, tokens):
                    s.append(t if t >= 0 else eot_id)
                full = [i for i, size in enumerate(cache.sizes) if size >= self.config.block_size] if use_cache else []
                logits = self._next_logits(seqs, cache, refill=full, step=nxt)
        finally:
            self.train(was_training)

    def _next_logits(self, seqs, cache, refill=(), step=None):
        """(B, vocab) logits for the next token of every sequence; step: the (B,) tokens just sampled,
        on the device (a finished row's is fed too, and ignored)."""
        device = self.lm_head.weight.device
        if cache is None:  # full recomputation over the last block_size tokens of each row
            window = [s[-self.config.block_size:] for s in seqs]
            if len({len(w) for w in window}) == 1:  # one batch when the rows are as long, else one by one
                return self(torch.tensor(window, device=device))[0][:, -1]
            return torch.cat([self(torch.tensor([w], device=device))[0][:, -1] for w in window])
        last = {}
        for i in refill:  # (re)fill a row's cache from its text, keeping the newest half when it is full
            keep = seqs[i] if step is None else seqs[i][-(self.config.block_size // 2) - 1:-1]
            row = cache.row(i)
            row.reset()
            last[i] = self(torch.tensor([keep], device=device), cache=row)[0][:, -1]
        if step is None:
            return torch.cat([last[i] for i in range(len(seqs))])
        return self(step[:, None], cache=cache)[0][:, -1]

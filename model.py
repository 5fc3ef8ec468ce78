"""
A GPT language model in one file: GPT-2 classic.

Token + learned position embeddings, n_layer pre-LayerNorm blocks (attention,
then a 4x GELU MLP, each added to the residual stream), a final LayerNorm and
an output head tied to the token embedding. With the same sizes it has exactly
the parameters of Hugging Face's GPT2LMHeadModel, so weights map one to one.

Switches in GPTConfig turn on the changes that made later GPTs train faster (rotary positions,
RMSNorm, QK-norm, ReLU^2 or SwiGLU MLPs, an untied head, zero-initialized projections, logit
soft-capping); all off is GPT-2 classic, the default. docs/recipes.md measures what each buys.

Generation (the KV cache, sampling) lives in generate.py: GPT inherits its generate().

References:
1) OpenAI's GPT-2: https://github.com/openai/gpt-2/blob/master/src/model.py
2) nanoGPT, whose model.py set the style of this one: https://github.com/karpathy/nanoGPT
3) modded-nanogpt, the GPT-2 speedrun the switches come from: https://github.com/KellerJordan/modded-nanogpt
"""

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from generate import Generation


@dataclass
class GPTConfig:
    block_size: int = 1024   # context length: the size of the position table
    vocab_size: int = 50257  # GPT-2's 50,256 BPE merges + <|endoftext|>: the ids the tokenizer has
    # the token table and the head get rows up to a multiple of this (64: 50,304 for GPT-2, shapes GPU
    # matmul kernels like); the extra ids stay zero, are never predicted and never in the loss. 1: off
    pad_vocab_to: int = 1
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True        # biases in Linear and LayerNorm, like GPT-2; False is a bit faster
    gelu_approx: str = "none"  # "none": exact (erf) GELU; "tanh": GPT-2's approximation, for OpenAI's weights
    # modern switches, all off by default (GPT-2 classic)
    rope: bool = False           # rotary position embeddings instead of the learned position table
    norm: str = "layernorm"      # "rmsnorm": normalize by the root mean square only, no mean, no bias
    qk_norm: bool = False        # RMS-normalize each head's queries and keys before attention
    mlp: str = "gelu"            # "relu2": ReLU squared; "swiglu": a SiLU-gated MLP of the same size
    tie_embeddings: bool = True  # False: the output head gets a matrix of its own
    zero_init: bool = False      # output projections (and an untied head) start at zero
    logit_softcap: float = 0.0   # > 0: logits = c * tanh(logits / c), which bounds them smoothly


def norm_layer(config):
    # RMSNorm (Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467): skip LayerNorm's mean and bias;
    # as good, and cheaper where it has a fused kernel (GPUs; on CPU, torch 2.13's is 2.5x slower than LayerNorm)
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=1e-6)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embeddings (Su et al. 2021, https://arxiv.org/abs/2104.09864): rotate each pair of
    channels of the queries and keys by an angle proportional to the position, so attention scores depend
    on relative positions, with no position table to learn."""

    def __init__(self, head_size, block_size, base=10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2).float() / head_size)
        angles = torch.outer(torch.arange(block_size).float(), inv_freq)  # (block_size, head_size / 2)
        self.register_buffer("cos", angles.cos(), persistent=False)  # derived: not saved in checkpoints
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, pos):
        """cos and sin for positions pos ((T,) or (B, T)), shaped to broadcast over (B, n_head, T, hs/2)."""
        cos, sin = self.cos[pos], self.sin[pos]
        return (cos[:, None], sin[:, None]) if pos.dim() == 2 else (cos, sin)


def apply_rotary(x, rotary):
    cos, sin = rotary
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        # query, key and value projections for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.qk_norm = config.qk_norm

    def forward(self, x, rotary=None, cache=None, layer=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size): heads become a batch dimension
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:  # QK-norm (Dehghani et al. 2023, https://arxiv.org/abs/2302.05442): bounded
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))  # scores allow higher rates
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        if cache is None:
            # scaled_dot_product_attention picks FlashAttention on GPUs that have it
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=True)
        else:  # generating: the cache (generate.py's KVCache) stores k, v and hands back the whole past
            k, v, mask = cache.update(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.kind = config.mlp
        hidden = 4 * config.n_embd
        if self.kind == "swiglu":
            # SwiGLU (Shazeer 2020, https://arxiv.org/abs/2002.05202): silu(x W) * (x V), then down. Three
            # matrices, so a hidden width of 8/3 x n_embd keeps the parameter count of the 4x MLP
            hidden = 8 * math.ceil(8 * config.n_embd / 3 / 8)
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if self.kind == "swiglu" else hidden, bias=config.bias)
        # exact (erf) GELU by default, as nanoGPT: on CPUs it is 2-3x faster than GPT-2's tanh approximation,
        # and the two differ by < 1e-3 (Hugging Face's GPT-2 calls them "gelu" and "gelu_new"). Weights
        # trained with the approximation (OpenAI's GPT-2) keep it: gelu_approx="tanh"
        self.gelu = nn.GELU(approximate=config.gelu_approx)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.kind == "relu2":  # ReLU squared (So et al. 2021, Primer, https://arxiv.org/abs/2109.08668)
            h = F.relu(h).square()
        elif self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = self.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = norm_layer(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm_layer(config)
        self.mlp = MLP(config)

    def forward(self, x, rotary=None, cache=None, layer=0):
        # pre-norm: the residual stream itself is never normalized, which keeps deep stacks trainable
        x = x + self.attn(self.ln_1(x), rotary, cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


def check_config(config):
    """A one-line ValueError for a GPTConfig that cannot be built."""
    if config.n_embd % config.n_head:
        raise ValueError(f"n_embd={config.n_embd} is not a multiple of n_head={config.n_head}")
    if config.norm not in ("layernorm", "rmsnorm"):
        raise ValueError(f"norm={config.norm!r}: expected layernorm or rmsnorm")
    if config.mlp not in ("gelu", "relu2", "swiglu"):
        raise ValueError(f"mlp={config.mlp!r}: expected gelu, relu2 or swiglu")
    if config.rope and (config.n_embd // config.n_head) % 2:
        raise ValueError(f"rope needs an even head size, not {config.n_embd // config.n_head}")
    if config.pad_vocab_to < 1:
        raise ValueError(f"pad_vocab_to={config.pad_vocab_to}: must be at least 1 (1 is no padding)")
    if config.logit_softcap < 0:
        raise ValueError(f"logit_softcap={config.logit_softcap}: must be >= 0 (0 is off)")


def padded_vocab_size(config):
    """Rows of the token table and the head: vocab_size rounded up to a multiple of pad_vocab_to."""
    return math.ceil(config.vocab_size / config.pad_vocab_to) * config.pad_vocab_to


class GPT(Generation, nn.Module):  # generate() and generate_stream(): generate.py

    def __init__(self, config):
        super().__init__()
        self.config = config
        check_config(config)
        rows = padded_vocab_size(config)
        # (built in GPT-2's order, so the random init of a classic model is the same as it always was)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(rows, config.n_embd),
            **({} if config.rope else {"wpe": nn.Embedding(config.block_size, config.n_embd)}),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=norm_layer(config),
        ))
        if config.rope:
            self.rotary = Rotary(config.n_embd // config.n_head, config.block_size)
        self.lm_head = nn.Linear(config.n_embd, rows, bias=False)
        if config.tie_embeddings:
            # weight tying: the input embedding and the output projection are one matrix, as in GPT-2
            # (https://arxiv.org/abs/1608.05859); it saves vocab_size * n_embd parameters
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init: each block adds two projections to the residual stream, so scale them by
        # 1/sqrt(2 * n_layer) to keep the stream's variance independent of depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init:  # each block starts as the identity; it learns what to add (modded-nanogpt)
                    torch.nn.init.zeros_(p)
                else:
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.zero_init and not config.tie_embeddings:
            torch.nn.init.zeros_(self.lm_head.weight)  # uniform predictions at the start
        with torch.no_grad():  # padding rows: zero, and they stay zero (no token looks them up, no gradient
            self.transformer.wte.weight[config.vocab_size:] = 0  # reaches them), so export can drop them
            self.lm_head.weight[config.vocab_size:] = 0
        self.gradient_checkpointing = False  # a training choice, not part of the model: set by train.py

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=False):
        """Parameters, counting a tied embedding once. non_embedding=True leaves out the lookup tables:
        the position table and an untied token table (a tied one stays: it is also the output layer)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.transformer.wte.weight.numel()
        return n

    def forward(self, idx, targets=None, cache=None, return_logits=True, per_target=False):
        """Logits (B, T, vocab) and the mean cross-entropy if targets are given; without targets only
        the last position's logits (B, 1, vocab), which is all generation needs. return_logits=False
        gives (None, loss): training needs only the loss, and a (B, T, vocab) tensor held by the caller
        would stay alive through the next forward (1.6 GB for GPT-2 at batch 16 in bf16).
        per_target=True gives (None, the cross-entropy of each target that is not -1, in row-major
        order): the head runs on those positions only (HellaSwag scores a few tokens of each row)."""
        B, T = idx.size()
        # end (the longest row's length after this forward) is a Python int either way: the check costs
        # no device sync and no torch.compile graph break; the cache knows its lengths on the host, and
        # builds the positions and the attention mask once here, for every layer
        pos, end = (torch.arange(T, device=idx.device), T) if cache is None else cache.begin(T)
        if end > self.config.block_size:
            raise ValueError(f"sequence of {end} positions is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)
        rotary = self.rotary(pos) if self.config.rope else None  # rotary positions act inside attention
        if rotary is None:
            x = x + self.transformer.wpe(pos)  # learned positions: added to the token embeddings
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            if self.gradient_checkpointing and self.training and cache is None:
                # keep only each block's input; recompute its insides during backward (same dropout masks)
                x = torch.utils.checkpoint.checkpoint(block, x, rotary, use_reentrant=False)
            else:
                x = block(x, rotary, cache, layer)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.advance(T)
        if targets is None:
            x = x[:, [-1], :]  # generation needs only the last position (the list index keeps the time dim)
        elif per_target:
            scored = targets >= 0
            x, targets = x[scored], targets[scored]  # (M, C): the head's (M, vocab) instead of (B, T, vocab)
        logits = self.lm_head(x)
        if logits.size(-1) > self.config.vocab_size:  # vocabulary padding: those ids do not exist
            logits = logits[..., :self.config.vocab_size]
        if self.config.logit_softcap > 0:
            # soft-capping (Gemma 2, https://arxiv.org/abs/2408.00118): no logit can run away, smoothly
            c = self.config.logit_softcap
            logits = c * torch.tanh(logits / c)
        if targets is None:
            return logits, None
        if per_target:
            return None, F.cross_entropy(logits.float(), targets, reduction="none")
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return (logits if return_logits else None), loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, optimizer="adamw",
                             muon_lr=0.02, muon_momentum=0.95):
        """AdamW with weight decay on the matrices (matmul weights, embeddings) only: decaying biases and
        norm gains just pulls them towards zero for no benefit. optimizer="muon": Muon for the blocks'
        matrices instead (muon.py), AdamW for the rest. Each group remembers its base_lr, which the
        learning-rate schedule scales."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        vectors = [p for _, p in named if p.dim() < 2]
        if optimizer == "muon":
            from muon import Muon
            hidden = [p for n, p in named if p.dim() >= 2 and n.startswith("transformer.h.")]
            tables = [p for n, p in named if p.dim() >= 2 and not n.startswith("transformer.h.")]
            return Muon([
                {"params": hidden, "use_muon": True, "lr": muon_lr, "base_lr": muon_lr, "momentum": muon_momentum,
                 "weight_decay": 0.0},  # as in Muon's own recipe
                {"params": tables, "use_muon": False, "lr": learning_rate, "base_lr": learning_rate, "betas": betas,
                 "weight_decay": weight_decay},
                {"params": vectors, "use_muon": False, "lr": learning_rate, "base_lr": learning_rate, "betas": betas,
                 "weight_decay": 0.0},
            ])
        groups = [
            {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": weight_decay, "base_lr": learning_rate},
            {"params": vectors, "weight_decay": 0.0, "base_lr": learning_rate},
        ]
        # the fused kernel does the whole update in one pass: faster on GPUs and on CPUs
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward): 6 N + 12 L C T, as in the PaLM paper's appendix B
        (https://arxiv.org/abs/2204.02311) and nanoGPT: 6 per non-embedding parameter N for the matmuls
        (the tied head counts, with its padding rows: the GPU multiplies them), plus the attention scores
        and their weighted sum over the whole T x T square (causal masking's saving not subtracted)."""
        c = self.config
        return 6 * self.get_num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * c.block_size

    def estimate_memory(self, batch_size, dtype_bytes=4, gradient_checkpointing=False):
        """Rough peak bytes of one training step: fp32 weights, gradients and AdamW moments (16 bytes per
        parameter), the activations kept for backward (about 34 bytes per token and channel per layer
        in 16-bit, Korthikanti et al. 2022, https://arxiv.org/abs/2205.05198, with fused attention),
        and the logits with their softmax and gradient."""
        c = self.config
        tokens = batch_size * c.block_size
        per_layer = 34 * tokens * c.n_embd * dtype_bytes // 2
        if gradient_checkpointing:  # block inputs only, plus one block's insides while it is recomputed
            activations = c.n_layer * tokens * c.n_embd * dtype_bytes + per_layer
        else:
            activations = c.n_layer * per_layer
        return 16 * self.get_num_params() + activations + 12 * tokens * padded_vocab_size(c)

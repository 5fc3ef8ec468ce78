"""
Muon for the hidden weight matrices, AdamW for everything else, in one optimizer.

Muon (Keller Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/, the optimizer of the
modded-nanogpt speedrun) keeps SGD momentum for each 2-D weight, then replaces the update by the
nearest semi-orthogonal matrix (the same singular vectors, all singular values 1), computed with a
few Newton-Schulz iterations. Every direction of the update then moves at the same rate, which lets
the hidden layers take much larger steps than Adam's. Embeddings, the output head, biases and norm
gains keep AdamW: their geometry is not a matrix-to-matrix map.

One optimizer object (groups flagged use_muon) keeps checkpoints, learning-rate schedules, gradient
scaling and DDP the same as with plain AdamW.
"""

import torch


def orthogonalize(g, steps=5):
    """An approximation of U V^T for g = U S V^T: a quintic Newton-Schulz iteration whose coefficients
    push every singular value towards 1 in few steps (they land in about [0.7, 1.2], close enough)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()  # bf16 is stable here and fast on GPUs
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)  # singular values <= 1, where the iteration converges
    for _ in range(steps):
        xxt = x @ x.T
        x = a * x + (b * xxt + c * xxt @ xxt) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Param groups with use_muon=True get Muon (lr, momentum, weight_decay); the others AdamW
    (lr, betas, eps, weight_decay)."""

    def __init__(self, groups, lr=0.02, momentum=0.95, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
        super().__init__(groups, dict(lr=lr, momentum=momentum, betas=betas, eps=eps, weight_decay=weight_decay,
                                      use_muon=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (self._muon if group["use_muon"] else self._adamw)(p, group)

    def _muon(self, p, group):
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf, m = state["momentum_buffer"], group["momentum"]
        buf.lerp_(p.grad, 1 - m)
        update = orthogonalize(p.grad.lerp(buf, m))  # Nesterov: a step further along the momentum
        # an orthogonal update of a tall matrix is smaller per entry: scale it to the same RMS
        scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-group["lr"] * scale)

    def _adamw(self, p, group):
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        (b1, b2), t = group["betas"], state["step"].item()
        state["exp_avg"].lerp_(p.grad, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        denom = (state["exp_avg_sq"] / (1 - b2 ** t)).sqrt_().add_(group["eps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - b1 ** t))

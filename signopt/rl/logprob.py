"""Per-token log-probabilities and entropies of a causal LM without materialising [B, T, V] logits.

For hidden states ``h[N, H]`` and an LM head ``W[V, H]`` (bias ``b``), with ``z = (hWᵀ + b)/τ``:
``logp_i = z_{i, y_i} − logsumexp(z_i)`` and ``H_i = logsumexp(z_i) − Σ_v softmax(z_i)_v z_{i,v}``.
:class:`ChunkedLogProb` computes these over row chunks of at most ``max_chunk_elems / V`` rows
and recomputes each chunk's logits in backward, where ∂logp_i/∂z_i = onehot(y_i) − softmax(z_i).
Peak extra memory is one chunk's logits instead of N·V. Entropies carry no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK_ELEMS = 1 << 22


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    z = (h @ weight.t()).float()
    if bias is not None:
        z = z + bias.float()
    return z / temperature if temperature != 1.0 else z


class ChunkedLogProb(torch.autograd.Function):
    """(hidden[N, H], weight[V, H], bias[V] | None, targets[N]) → (logp[N], entropy[N]), both fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, chunk_rows: int):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp)
        lse = torch.empty_like(logp)
        for s in range(0, n, chunk_rows):
            z = _chunk_logits(hidden[s : s + chunk_rows], weight, bias, temperature)
            c_lse = torch.logsumexp(z, dim=-1)
            lse[s : s + chunk_rows] = c_lse
            logp[s : s + chunk_rows] = z.gather(1, targets[s : s + chunk_rows, None]).squeeze(1) - c_lse
            z.sub_(c_lse[:, None])  # z ← log-softmax, in place
            entropy[s : s + chunk_rows] = -(z.exp() * z).sum(-1)
            del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        rows = ctx.chunk_rows
        for s in range(0, hidden.shape[0], rows):
            h = hidden[s : s + rows]
            g_out = grad_logp[s : s + rows].float()
            z = _chunk_logits(h, weight, bias, ctx.temperature)
            z.sub_(lse[s : s + rows, None]).exp_().mul_(-g_out[:, None])  # −softmax·g
            z.scatter_add_(1, targets[s : s + rows, None], g_out[:, None])  # + onehot·g
            if ctx.temperature != 1.0:
                z.div_(ctx.temperature)
            if need_h:
                grad_h[s : s + rows] = (z.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(z.t(), h.float())
            if need_b:
                grad_b += z.sum(0)
            del z
        return (
            grad_h,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
            None,
            None,
            None,
        )


def chunked_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    max_chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> tuple[Tensor, Tensor]:
    """log p(targets) and entropy for ``hidden[..., H]``, ``targets[...]``; chunks hold at most
    ``max_chunk_elems`` logits."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if max_chunk_elems < 1:
        raise ValueError(f"max_chunk_elems={max_chunk_elems} must be ≥ 1")
    shape = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    rows = max(1, max_chunk_elems // weight.shape[0])
    logp, ent = ChunkedLogProb.apply(h, weight, bias, targets.reshape(-1), float(temperature), rows)
    return logp.view(shape), ent.view(shape)


def logprobs_from_logits(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """log_softmax(logits/τ) at ``targets``, and the (gradient-free) entropy, from full logits."""
    logsm = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy.detach()


def naive_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, *, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Reference path: the full logits, then :func:`logprobs_from_logits`."""
    return logprobs_from_logits(torch.nn.functional.linear(hidden, weight, bias), targets, temperature)

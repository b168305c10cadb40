"""Building blocks shared by the policy losses: the PPO clipped surrogate and step-wide reductions."""

from __future__ import annotations

import torch
from torch import Tensor

from .aggregation import aggregate
from .loss_inputs import LossInputs


def clipped_surrogate(ratio: Tensor, adv: Tensor, eps_low: float | Tensor, eps_high: float | Tensor) -> Tensor:
    """PPO clip: −min(r·A, clip(r, 1 − ε_low, 1 + ε_high)·A); ε may be per-token tensors."""
    lo = torch.as_tensor(1 - eps_low, dtype=ratio.dtype)
    hi = torch.as_tensor(1 + eps_high, dtype=ratio.dtype)
    clipped = torch.minimum(torch.maximum(ratio, lo), hi)
    return -torch.minimum(ratio * adv, clipped * adv)


def agg_tokens(x: LossInputs, per_token: Tensor, agg: str) -> Tensor:
    """Aggregate a per-token loss with the step-wide normalisers of ``x``."""
    return aggregate(
        per_token, x.mask, agg, num_tokens=x.norm("num_tokens"), num_seqs=x.norm("num_seqs"), max_len=x.norm("max_len")
    )


def seq_sum(x: LossInputs, per_seq: Tensor) -> Tensor:
    """Σ_i L_i / N_seqs (step-wide)."""
    return per_seq.sum() / max(x.norm("num_seqs"), 1.0)


def grouped(x: LossInputs, t: Tensor) -> Tensor:
    """View ``t[B, ...]`` as ``[B/G, G, ...]``."""
    return t.view(-1, x.group_size, *t.shape[1:])


def require(x: LossInputs, loss: str, *fields: str) -> None:
    """Raise a ValueError when a field that ``loss`` reads is missing."""
    for f in fields:
        if getattr(x, f) is None:
            raise ValueError(f"loss={loss!r} needs {f}")

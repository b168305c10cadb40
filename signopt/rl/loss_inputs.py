"""The tensors a policy loss reads, and the step-wide normalisers that make it split-invariant."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

LOG_RATIO_CLAMP = 20.0


@dataclass
class LossInputs:
    """One micro-batch of ``B`` rollouts (groups of ``group_size`` kept whole and contiguous).

    ``logp, old_logp, ref_logp, mask, entropy, tokens``: ``[B, T]`` over completion tokens;
    ``advantages, rewards``: ``[B]``. ``norms`` holds step-wide normalisers from
    :func:`step_norms` (missing keys are computed from this micro-batch alone).
    """

    logp: Tensor
    old_logp: Tensor
    mask: Tensor
    advantages: Tensor
    ref_logp: Tensor | None = None
    rewards: Tensor | None = None
    entropy: Tensor | None = None
    tokens: Tensor | None = None
    group_size: int = 1
    norms: dict = field(default_factory=dict)

    def norm(self, key: str) -> float:
        """Step-wide normaliser ``key``, or its value on this micro-batch when not given."""
        if key in self.norms:
            return self.norms[key]
        return step_norms(self.mask, self.rewards, self.group_size, self.entropy)[key]

    @property
    def log_ratio(self) -> Tensor:
        """log r = logp − old_logp, zero at masked positions and clamped to ±20 (safe to exp)."""
        lr = (self.logp - self.old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return torch.where(self.mask.bool(), lr, torch.zeros((), dtype=lr.dtype))

    @property
    def adv(self) -> Tensor:
        """Advantages broadcastable to ``[B, T]``."""
        return self.advantages.unsqueeze(-1) if self.advantages.dim() == 1 else self.advantages


def step_norms(mask: Tensor, rewards: Tensor | None, group_size: int, entropy: Tensor | None = None) -> dict:
    """Normalisers of a whole optimizer step: tokens, sequences, max length, groups (questions),
    winner/loser pairs, and log-entropy mean/std."""
    m = mask.bool()
    out = {"num_tokens": float(m.sum()), "num_seqs": float(mask.shape[0]), "max_len": int(mask.shape[1])}
    if rewards is not None:
        g = rewards.view(-1, group_size)
        out["num_groups"] = float(g.shape[0])
        out["num_pairs"] = float((g.unsqueeze(-1) > g.unsqueeze(-2)).sum())
    if entropy is not None and m.any():
        log_h = torch.log(entropy[m].double().clamp(min=1e-12))
        out["log_entropy_mean"] = float(log_h.mean())
        out["log_entropy_std"] = float(log_h.std()) if log_h.numel() > 1 else 0.0
    return out

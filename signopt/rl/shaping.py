"""DAPO's data-side pieces: dynamic sampling, overlong filtering and the soft overlong penalty."""

from __future__ import annotations

import torch
from torch import Tensor


def informative_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Dynamic sampling: ``[B]`` bool, True for rollouts of groups whose rewards are not all equal
    (0 < #correct < G for binary rewards)."""
    g = rewards.view(-1, group_size)
    keep = g.max(-1).values != g.min(-1).values
    return keep.repeat_interleave(group_size)


def soft_overlong_penalty(lengths: Tensor, max_len: int, cache_len: int) -> Tensor:
    """R_len(|y|) = 0 if |y| ≤ L_max − L_cache; ((L_max − L_cache) − |y|)/L_cache if
    L_max − L_cache < |y| ≤ L_max; −1 beyond L_max."""
    if not 0 <= cache_len <= max_len:
        raise ValueError(f"overlong_cache={cache_len} must be in [0, max_new_tokens={max_len}]")
    lengths = lengths.to(torch.float64)
    expected = max_len - cache_len
    ramp = (expected - lengths) / max(cache_len, 1)
    out = torch.where(lengths <= expected, torch.zeros_like(lengths), ramp)
    return torch.where(lengths > max_len, torch.full_like(lengths, -1.0), out)

"""Aggregation of a per-token loss ``L[B, T]`` under a validity ``mask[B, T]`` into a scalar.

All normalisers may be passed in for the **whole optimizer step** (every micro-batch, every
rank), which makes the summed micro-batch losses equal to the full-batch loss:

* ``token-mean``               Σ_it L·m / N_tokens
* ``seq-mean-token-mean``      Σ_i (Σ_t L·m / Σ_t m) / N_seqs
* ``seq-mean-token-sum``       Σ_i Σ_t L·m / N_seqs
* ``seq-mean-token-sum-norm``  Σ_it L·m / (N_seqs · L_max)

When a normaliser is ``None`` it is taken from the tensors given (correct only for a step made
of a single micro-batch).
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def check_choice(name: str, value: str, allowed) -> None:
    """Raise a ValueError naming ``name`` and the allowed values when ``value`` is not allowed."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(str, allowed))}")


def masked_seq_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence masked mean ``mm(x)_i = Σ_t x·m / max(Σ_t m, 1)`` → ``[B]``."""
    m = mask.to(x.dtype)
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype)).sum(-1) / m.sum(-1).clamp(min=1)


def aggregate(
    loss: Tensor,
    mask: Tensor,
    mode: str = "seq-mean-token-mean",
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce ``loss[B, T]`` to a scalar with aggregation ``mode`` (see module docstring)."""
    check_choice("agg", mode, AGGREGATIONS)
    m = mask.to(loss.dtype)
    masked = torch.where(mask.bool(), loss, torch.zeros((), dtype=loss.dtype))
    if num_seqs is None:
        num_seqs = loss.shape[0]
    if mode == "token-mean":
        if num_tokens is None:
            num_tokens = m.sum().item()
        return masked.sum() / max(float(num_tokens), 1.0)
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / m.sum(-1).clamp(min=1)).sum() / max(float(num_seqs), 1.0)
    if mode == "seq-mean-token-sum":
        return masked.sum() / max(float(num_seqs), 1.0)
    if max_len is None:
        max_len = loss.shape[1]
    return masked.sum() / (max(float(num_seqs), 1.0) * max_len)


def check_knobs(what: str, fn, knobs: dict, skip: int = 1) -> None:
    """Raise a ValueError when ``knobs`` holds a keyword that ``fn`` does not take."""
    params = list(inspect.signature(fn).parameters)[skip:]
    unknown = sorted(set(knobs) - set(params))
    if unknown:
        raise ValueError(f"{what} does not take {', '.join(unknown)}; allowed knobs: {', '.join(params) or 'none'}")

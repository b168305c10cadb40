"""The kappa registry of Lion-kappa: the map ``c -> grad kappa(c)`` replacing ``sign`` in Lion.

Lion-kappa (Chen, Liu, Liang, Liu 2023, arXiv 2310.05898) minimises ``f(x) + kappa*(x)``;
``grad kappa(0) = 0`` for every entry. ``l1`` and ``l2sq`` are the paper's examples; ``huber``,
``l2``, ``row_l2`` and ``lp`` are exact convex analysis of the named norms:

=========  =========================  ===================================  ============
name       kappa(x)                   grad kappa(x)                        reduction
=========  =========================  ===================================  ============
l1         ||x||_1                    sign(x)  (Lion)                      none
l2sq       ||x||^2 / 2                x        (EMA momentum SGD)          none
huber      sum Huber_delta(x_i)       clip(x / delta, -1, 1)               none
l2         ||x||_2 (per tensor)       x / ||x||_2                          tensor norm
row_l2     sum_rows ||x_r||_2         x_r / ||x_r||_2                      row norms
lp         ||x||_p, p > 1             sign(x)|x|^(p-1) / ||x||_p^(p-1)      tensor norm
=========  =========================  ===================================  ============

Norms accumulate in fp64 (squares and sums of fp32 values), are rounded once to fp32 and are
then used in fp32, so every backend gets the same fp32 norm whatever its summation order.
Rows are ``x.reshape(x.shape[0], -1)`` for ``x.dim() >= 2``; a 0-d or 1-d tensor is one row.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


from .declaration import KAPPAS

KappaFn = Callable[[Tensor], Tensor]


def rows_view(x: Tensor) -> Tensor:
    """The 2-D row view used by row-wise rules."""
    return x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(1, -1)


def _safe_div(x: Tensor, norm: Tensor) -> Tensor:
    """``x / norm`` with ``0`` where ``norm == 0`` (then ``x == 0`` too)."""
    return torch.where(norm > 0, x / torch.where(norm > 0, norm, torch.ones_like(norm)),
                       torch.zeros_like(x))


def l2_norm(c: Tensor) -> Tensor:
    """||c||_2 in ``c``'s dtype, accumulated in fp64."""
    return c.double().square().sum().sqrt().to(c.dtype)


def row_l2_norms(c: Tensor) -> Tensor:
    """Row norms of ``rows_view(c)`` in ``c``'s dtype, shape ``[rows, 1]``, accumulated in fp64."""
    return rows_view(c).double().square().sum(dim=1, keepdim=True).sqrt().to(c.dtype)


def lp_norm_pow(c: Tensor, p: float) -> Tensor:
    """``||c||_p^(p-1)`` in ``c``'s dtype, accumulated in fp64."""
    return c.double().abs().pow(p).sum().pow((p - 1.0) / p).to(c.dtype)


def grad_kappa(name: str, c: Tensor, *, delta: float, p: float,
               fn: KappaFn | None = None) -> Tensor:
    """``grad kappa(c)`` in ``c``'s dtype (the compute dtype: fp32, or fp64 for fp64 parameters)
    for the registry entry ``name`` (or the user callable ``fn``)."""
    if fn is not None:
        out = fn(c)
        if out.shape != c.shape:
            raise ValueError(f"kappa callable returned shape {tuple(out.shape)}, expected {tuple(c.shape)}")
        return out.to(c.dtype)
    if name == "l1":
        return torch.sign(c)
    if name == "l2sq":
        return c
    if name == "huber":
        return torch.clamp(c / delta, -1.0, 1.0)
    if name == "l2":
        return _safe_div(c, l2_norm(c))
    if name == "row_l2":
        return _safe_div(rows_view(c), row_l2_norms(c)).reshape(c.shape)
    if name == "lp":
        mag = torch.sign(c) * c.abs().pow(p - 1.0)
        return _safe_div(mag, lp_norm_pow(c, p))
    raise ValueError(f"kappa must be one of {tuple(KAPPAS)} or a callable, got {name!r}")

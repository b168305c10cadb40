"""Per-step fp32 scalars, computed once by shared host code for every backend.

Kernels never re-derive these (an fp32 ``1 - beta1`` computed in a kernel is 0.100000024, not
0.1f). Python-float hyperparameters are combined in fp64 and rounded once to fp32; with a
tensor ``lr`` the lr-dependent expressions are fp32 torch ops on the lr tensor's device.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import torch
from torch import Tensor

from .rule import UpdateRule


def f32(x: float) -> float:
    """``x`` rounded to the nearest fp32 value (returned as a Python float)."""
    return struct.unpack("f", struct.pack("f", float(x)))[0]


Scalar = float | Tensor


@dataclass(frozen=True)
class GroupScalars:
    """Scalars of one group for one step; floats are exactly fp32-representable.

    ``decay`` multiplies the parameter before the update (``1 - lr*wd`` decoupled,
    ``1 - wd*lr/lr0`` independent, ``1`` for ``l2`` or no weight decay); ``l2`` is the
    coefficient added to the gradient as ``g + l2*p``. ``inv_scale`` (``1/grad_scale``) and
    ``found_inf`` come from a GradScaler.
    """

    lr: Scalar
    decay: Scalar
    l2: float
    beta1: float
    omb1: float
    beta2: float
    omb2: float
    eps: float
    huber_delta: float
    p: float
    envelope_decay: float
    inv_scale: Tensor | None
    found_inf: Tensor | None


def _betas(family: str, group: dict) -> tuple[float, float]:
    if "betas" in group:
        return float(group["betas"][0]), float(group["betas"][1])
    beta = float(group.get("momentum", group.get("beta", 0.0)))
    return beta, beta


def group_scalars(rule: UpdateRule, group: dict, grad_scale: Tensor | None,
                  found_inf: Tensor | None) -> GroupScalars:
    """Compute the fp32 scalars of ``group`` for this step."""
    lr, wd = group["lr"], float(group["weight_decay"])
    lr0 = float(group["lr0"])
    if isinstance(lr, Tensor):
        lr32 = lr.to(torch.float32)
        if wd == 0.0 or rule.wd_mode == "l2":
            decay: Scalar = torch.ones_like(lr32)
        elif rule.wd_mode == "decoupled":
            decay = 1.0 - lr32 * f32(wd)
        else:
            decay = 1.0 - (lr32 * f32(wd)) / f32(lr0)
        lr_s: Scalar = lr32
    else:
        lr = float(lr)
        if wd == 0.0 or rule.wd_mode == "l2":
            decay = 1.0
        elif rule.wd_mode == "decoupled":
            decay = f32(1.0 - lr * wd)
        else:
            decay = f32(1.0 - wd * lr / lr0)
        lr_s = f32(lr)
    b1, b2 = _betas(rule.family, group)
    inv_scale = None
    if grad_scale is not None:
        inv_scale = torch.reciprocal(grad_scale.to(torch.float32))
    return GroupScalars(
        lr=lr_s, decay=decay, l2=f32(wd) if rule.wd_mode == "l2" else 0.0,
        beta1=f32(b1), omb1=f32(1.0 - b1), beta2=f32(b2), omb2=f32(1.0 - b2),
        eps=f32(group.get("eps", 1e-8)), huber_delta=f32(group.get("huber_delta", 1.0)),
        p=f32(group.get("p", 2.0)), envelope_decay=f32(group.get("envelope_decay", 1.0)),
        inv_scale=inv_scale, found_inf=found_inf,
    )


def bias_corrections(group: dict, step: int) -> tuple[float, float]:
    """AdamW bias corrections ``(1 - beta1**t, 1 - beta2**t)`` in fp64, rounded once to fp32."""
    b1, b2 = group["betas"]
    return f32(1.0 - float(b1) ** step), f32(1.0 - float(b2) ** step)

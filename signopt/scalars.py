"""Per-step fp32 scalars, computed once by shared host code for every backend.

Kernels never re-derive these (an fp32 ``1 - beta1`` computed in a kernel is 0.100000024, not
0.1f). Python-float hyperparameters are combined in fp64 and rounded once to fp32; with a
tensor ``lr`` the lr-dependent expressions are fp32 torch ops on the lr tensor's device.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, make_dataclass
from typing import Optional

import torch
from torch import Tensor

from .declaration import SCALARS
from .philox import derive_keys
from .rule import UpdateRule


def f32(x: float) -> float:
    """``x`` rounded to the nearest fp32 value (returned as a Python float)."""
    return struct.unpack("f", struct.pack("f", float(x)))[0]


Scalar = float | Tensor

GroupScalars = make_dataclass(
    "GroupScalars",
    [(s.name, Scalar if s.name in ("lr", "decay") else float) for s in SCALARS]
    + [("inv_scale", Optional[Tensor]), ("found_inf", Optional[Tensor])],
    frozen=True)
GroupScalars.__doc__ = """Scalars of one group for one step, named as :data:`signopt.declaration.SCALARS`
(floats are exactly fp32-representable, ``lp_p`` and ``lp_root`` fp64).

``decay`` multiplies the parameter before the update (``1 - lr*wd`` decoupled,
``1 - wd*lr/lr0`` independent, ``1`` for ``l2`` or no weight decay); ``l2`` is the
coefficient added to the gradient as ``g + l2*p``. ``inv_scale`` (``1/grad_scale``) and
``found_inf`` come from a GradScaler."""


@dataclass(frozen=True)
class StepValues:
    """What one step of a group needs besides its gradients, derived once per step by
    :func:`step_values`: the group's scalars, the Philox keys of this step's (step, tensor)
    pairs (``keys``: two words per slot, ``[k0, k1, k0, k1, ...]``, as the kernels take them;
    None when the rule draws no random bits) and AdamW's bias corrections (``bias``: per slot
    ``1 - beta1**t, 1 - beta2**t``, flat the same way; None unless the rule bias-corrects)."""

    scalars: GroupScalars
    keys: list[int] | None = None
    bias: list[float] | None = None

    def key(self, slot: int) -> tuple[int, int] | None:
        """Slot ``slot``'s key ``(k0, k1)``, or None."""
        return None if self.keys is None else (self.keys[2 * slot], self.keys[2 * slot + 1])

    def bias_of(self, slot: int) -> tuple[float, float] | None:
        """Slot ``slot``'s bias corrections, or None."""
        return None if self.bias is None else (self.bias[2 * slot], self.bias[2 * slot + 1])


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
    p = f32(group.get("p", 2.0))
    return GroupScalars(
        lr=lr_s, decay=decay, l2=f32(wd) if rule.wd_mode == "l2" else 0.0,
        beta1=f32(b1), omb1=f32(1.0 - b1), beta2=f32(b2), omb2=f32(1.0 - b2),
        eps=f32(group.get("eps", 1e-8)), huber_delta=f32(group.get("huber_delta", 1.0)),
        p_minus_1=f32(p - 1.0), envelope_decay=f32(group.get("envelope_decay", 1.0)),
        lp_p=p, lp_root=(p - 1.0) / p, inv_scale=inv_scale, found_inf=found_inf,
    )


def bias_betas(group: dict) -> tuple[float, float]:
    """The betas a bias-correcting group's corrections are taken of."""
    b1, b2 = group["betas"]
    return float(b1), float(b2)


def bias_corrections(group: dict, step: int) -> tuple[float, float]:
    """AdamW bias corrections ``(1 - beta1**t, 1 - beta2**t)`` in fp64, rounded once to fp32."""
    b1, b2 = bias_betas(group)
    return f32(1.0 - b1 ** step), f32(1.0 - b2 ** step)


class StepCounters:
    """A plan's per-tensor step counters (0-dim int64 CPU tensors in the state): ``advance``
    adds 1 to each and returns the new values, in one C++ call where the extension is loaded
    (``torch.classes.signopt.StepCounters`` holds them: no Python per tensor), else with torch
    ops (also while ``torch.compile`` traces); ``retreat`` undoes a step GradScaler skipped."""

    def __init__(self, tensors: list[Tensor]) -> None:
        self.tensors = tensors
        self._held = None
        if tensors and not torch.compiler.is_compiling():
            try:
                self._held = torch.classes.signopt.StepCounters(tensors)
            except (AttributeError, RuntimeError):  # the extension is not loaded
                pass

    def advance(self) -> list[int]:
        if self._held is not None and not torch.compiler.is_compiling():
            return self._held.advance()
        if not self.tensors:
            return []
        torch._foreach_add_(self.tensors, 1)
        return torch.stack(self.tensors).tolist()

    def retreat(self) -> None:
        torch._foreach_sub_(self.tensors, 1)


def step_values(rule: UpdateRule, group: dict, scalars: GroupScalars, steps: list[int],
                indices: list[int]) -> StepValues:
    """This step's :class:`StepValues` of a group whose slots have step
    counters ``steps`` (already advanced) and tensor indices ``indices``: the one place Philox
    keys and bias corrections are derived, for every backend and path."""
    keys = bias = None
    if rule.draws_random_bits:
        keys = derive_keys(group["seed"], steps, indices)
    if rule.uses_bias_correction:
        if steps and steps.count(steps[0]) == len(steps):  # the usual case: one step for all
            bias = list(bias_corrections(group, steps[0])) * len(steps)
        else:
            memo: dict[int, tuple[float, float]] = {}
            bias = [b for t in steps for b in (memo[t] if t in memo else
                                               memo.setdefault(t, bias_corrections(group, t)))]
    return StepValues(scalars, keys, bias)

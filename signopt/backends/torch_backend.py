"""The torch reference backend: runs :func:`signopt.reference.update` one tensor at a time."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference, state_format
from ..casting import round_to_dtype
from ..rule import UpdateRule
from ..scalars import GroupScalars
from .slot import ParamSlot


def real_view(t: Tensor) -> Tensor:
    """Complex tensors are updated as their real view ``[..., 2]``."""
    return torch.view_as_real(t) if t.is_complex() else t


class TorchBackend:
    """Reference implementation; supports every rule, device and dtype."""

    name = "torch"

    def unsupported(self, rule: UpdateRule, params: list[Tensor]) -> str | None:
        return None

    def step(self, rule: UpdateRule, slots: list[ParamSlot], scalars: GroupScalars) -> Tensor | None:
        counts = []
        for slot in slots:
            p = real_view(slot.param)
            if p.numel() == 0:
                continue
            g = real_view(slot.grad)
            st = {k: state_format.decode(slot.state[k]) for k in rule.state_names()}
            indices = None
            if rule.stochastic:
                indices = torch.arange(p.numel(), device=p.device, dtype=torch.int64) + slot.index_offset
            p_new, new_state, bad = reference.update(
                rule, p.to(torch.float32), g, st, scalars, slot.bias, slot.key, indices)
            p.copy_(round_to_dtype(p_new, p.dtype))
            for k, v in new_state.items():
                stored = slot.state[k]
                stored.copy_(state_format.encode(v, state_format.format_of(stored)))
            counts.append(bad.sum())
        return torch.stack(counts).sum() if counts else None


def load() -> TorchBackend:
    return TorchBackend()

"""The torch reference backend: runs :func:`signopt.reference.update` one tensor at a time."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference, state_layout
from ..casting import round_to_dtype
from ..declaration import RANDOM_PURPOSES
from ..philox import element_word
from ..rule import UpdateRule
from ..scalars import StepValues
from .slot import ParamSlot


def real_view(t: Tensor) -> Tensor:
    """Complex tensors are updated as their real view ``[..., 2]``."""
    return torch.view_as_real(t) if t.is_complex() else t


class TorchBackend:
    """Reference implementation; supports every rule, device and dtype."""

    name = "torch"

    def unsupported(self, rule: UpdateRule, params: list[Tensor]) -> str | None:
        return None

    def prepare(self, rule: UpdateRule, slots: list[ParamSlot]) -> "TorchStep":
        return TorchStep(rule, slots)


class TorchStep:
    """:func:`signopt.reference.update` over a group's slots, one tensor at a time."""

    def __init__(self, rule: UpdateRule, slots: list[ParamSlot]) -> None:
        self.rule = rule
        self.slots = slots

    def run(self, grads: list[Tensor], values: StepValues, contiguous: bool) -> Tensor | None:
        rule, sc = self.rule, values.scalars
        counts = []
        skip = None if sc.found_inf is None else sc.found_inf > 0
        for i, slot in enumerate(self.slots):
            p = real_view(slot.param)
            if p.numel() == 0:
                continue
            g = real_view(grads[i])
            key = None if values.keys is None else values.keys[i]
            bias = None if values.bias is None else values.bias[i]
            slots = state_layout.slots(rule)
            st = {s.name: state_layout.read(rule, slot.state, s, tuple(p.shape)) for s in slots}
            indices = None
            if rule.draws_random_bits:
                indices = torch.arange(p.numel(), device=p.device, dtype=torch.int64) + slot.index_offset
            p_new, new_state, bad = reference.update(
                rule, p.to(reference.compute_dtype(p.dtype)), g, st, sc, bias, key, indices)
            param_word = None
            if rule.param_rounding == "stochastic":
                param_word = element_word(key, indices, RANDOM_PURPOSES["param_rounding"])
            p.copy_(round_to_dtype(p_new, p.dtype, param_word))
            state_word = None
            if rule.state_rounding == "stochastic":
                state_word = element_word(key, indices, RANDOM_PURPOSES["state_rounding"])
            for s in slots:
                if state_layout.per_element(rule, s):
                    state_layout.write(rule, slot.state, s, new_state[s.name], state_word, skip)
                else:  # envelope cells: reference.update keeps them under found_inf itself
                    state_layout.write(rule, slot.state, s, new_state[s.name])
            counts.append(bad.sum())
        return torch.stack(counts).sum() if counts else None


def load() -> TorchBackend:
    return TorchBackend()

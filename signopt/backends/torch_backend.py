"""The torch reference backend: runs :func:`signopt.reference.update` one tensor at a time."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference, state_layout
from ..casting import round_to_dtype
from ..declaration import RANDOM_PURPOSES, STEP_STATS
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

    def stats_unsupported(self, params: list[Tensor]) -> str | None:
        return None

    def prepare(self, rule: UpdateRule, slots: list[ParamSlot]) -> "TorchStep":
        return TorchStep(rule, slots)


class TorchStep:
    """:func:`signopt.reference.update` over a group's slots, one tensor at a time."""

    def __init__(self, rule: UpdateRule, slots: list[ParamSlot]) -> None:
        self.rule = rule
        self.slots = slots
        self.stats: Tensor | None = None  # step statistics (declaration.STEP_STATS), when slots keep signs

    def run(self, grads: list[Tensor], values: StepValues, contiguous: bool) -> Tensor | None:
        rule, sc = self.rule, values.scalars
        counts = []
        skip = None if sc.found_inf is None else sc.found_inf > 0
        stats = [] if self.slots and self.slots[0].sign is not None else None
        for i, slot in enumerate(self.slots):
            p = real_view(slot.param)
            if p.numel() == 0:
                continue
            g = real_view(grads[i])
            key, bias = values.key(i), values.bias_of(i)
            slots = state_layout.slots(rule)
            st = {s.name: state_layout.read(rule, slot.state, s, tuple(p.shape)) for s in slots}
            indices = None
            if rule.draws_random_bits:
                indices = torch.arange(p.numel(), device=p.device, dtype=torch.int64) + slot.index_offset
            p_in = p.to(reference.compute_dtype(p.dtype))
            p_new, new_state, bad, u = reference.update(rule, p_in, g, st, sc, bias, key, indices)
            if stats is not None:
                prev = slot.sign.view(p.shape)
                sq, flips, absmax, sign = reference.step_statistics(p_in, p_new, u, bad, new_state, prev)
                stats.append((sq, flips, absmax))
                prev.copy_(sign if skip is None else torch.where(skip.to(sign.device), prev, sign))
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
        total = torch.stack(counts).sum() if counts else None
        if stats is not None:
            self.stats = _group_stats(stats, total, skip, self.slots[0].param.device)
        return total


def _group_stats(per_tensor: list, nonfinite: Tensor | None, skip: Tensor | None,
                 device: torch.device) -> Tensor:
    """The group's :data:`~signopt.declaration.STEP_STATS` from each tensor's
    :func:`~signopt.reference.step_statistics`: sums, counts and NaN-propagating maxima (0 for a
    slot the rule lacks); a step skipped by ``found_inf`` reports no update and NaN maxima."""
    out = torch.zeros(len(STEP_STATS), dtype=torch.float64, device=device)
    if nonfinite is not None:
        out[STEP_STATS.index("nonfinite")] = nonfinite.double()
    if per_tensor:
        out[STEP_STATS.index("update_sq_sum")] = torch.stack([sq for sq, _, _ in per_tensor]).sum()
        out[STEP_STATS.index("sign_flips")] = torch.stack([f for _, f, _ in per_tensor]).sum().double()
        for name in per_tensor[0][2]:
            out[STEP_STATS.index(f"{name}_absmax")] = torch.stack([a[name].double() for _, _, a in per_tensor]).amax()
    return out if skip is None else reference.skipped_statistics(out, skip.to(torch.float32))


def load() -> TorchBackend:
    return TorchBackend()

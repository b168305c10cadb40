"""The torch reference backend: runs :func:`signopt.reference.update` one tensor at a time."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference, state_format
from ..casting import round_to_dtype
from ..philox import WORD_PARAM_ROUNDING, WORD_STATE_ROUNDING, element_words
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
        skip = None if scalars.found_inf is None else scalars.found_inf > 0
        for slot in slots:
            p = real_view(slot.param)
            if p.numel() == 0:
                continue
            g = real_view(slot.grad)
            st = {k: state_format.read(slot.state, k, rule.state_block) for k in rule.state_names()}
            indices = words = None
            if rule.draws_random_bits:
                indices = torch.arange(p.numel(), device=p.device, dtype=torch.int64) + slot.index_offset
                words = element_words(slot.key, indices)
            p_new, new_state, bad = reference.update(
                rule, p.to(reference.compute_dtype(p.dtype)), g, st, scalars, slot.bias, slot.key, indices)
            param_word = words[WORD_PARAM_ROUNDING] if rule.param_rounding == "stochastic" else None
            p.copy_(round_to_dtype(p_new, p.dtype, param_word))
            state_word = words[WORD_STATE_ROUNDING] if rule.state_rounding == "stochastic" else None
            for k, v in new_state.items():
                if k == "G" and rule.envelope != "element":
                    slot.state[k].copy_(v)
                else:
                    state_format.write(slot.state, k, v, rule.state_block, state_word, skip)
            counts.append(bad.sum())
        return torch.stack(counts).sum() if counts else None


def load() -> TorchBackend:
    return TorchBackend()

"""One parameter's work item for a backend."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ParamSlot:
    """A parameter with its gradient and state, plus the per-tensor step values.

    ``index`` is the tensor's position over all ``param_groups`` (it keys the random stream);
    ``index_offset`` is the flat index of this (local) tensor's first element in the full
    tensor, so sharded and unsharded runs draw the same bits. ``bias`` holds AdamW's
    ``(1 - beta1**t, 1 - beta2**t)``; ``key`` the per-(step, tensor) Philox key.
    """

    param: Tensor
    grad: Tensor
    state: dict
    index: int
    index_offset: int = 0
    bias: tuple[float, float] | None = None
    key: tuple[int, int] | None = None


class HeldGrads:
    """The ``grads`` a kept plan passes to a prepared call that holds its parameters and read
    and checked their gradients itself (``PreparedGroup.held``, C++)."""


HELD_GRADS = HeldGrads()

"""One parameter's work item for a backend."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ParamSlot:
    """A parameter (local shard, as the kernels see it) with its state and its position.

    ``grad`` is the gradient the slot was built with (a prepared call takes each step's
    gradients as an argument). ``index`` is the tensor's position over all ``param_groups`` (it
    keys the random stream); ``index_offset`` is the flat index of this (local) tensor's first
    element in the full tensor, so sharded and unsharded runs draw the same bits. ``sign`` (step
    statistics only, else None) holds the previous update sign of each element (int8: -1, 0, +1,
    flat over the real view).
    """

    param: Tensor
    grad: Tensor | None
    state: dict
    index: int
    index_offset: int = 0
    sign: Tensor | None = None

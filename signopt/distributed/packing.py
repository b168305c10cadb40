"""One bit per element, packed little-endian into ``uint8``: bit ``j`` of byte ``k`` holds
element ``8k + j``; the last byte is zero-padded, so ``d`` bits take ``ceil(d/8)`` bytes."""
from __future__ import annotations

import torch
from torch import Tensor

_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_SHIFTS = torch.arange(8, dtype=torch.uint8)


def packed_nbytes(numel: int) -> int:
    """Bytes that ``numel`` packed bits take."""
    return -(-numel // 8)


def pack_bits(bits: Tensor) -> Tensor:
    """``bool[d]`` -> ``uint8[ceil(d/8)]``."""
    flat = bits.reshape(-1).to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8))
    return (flat.reshape(-1, 8) * _WEIGHTS.to(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """``uint8[ceil(d/8)]`` -> ``bool[d]`` (the first ``numel`` bits)."""
    if packed.dtype != torch.uint8 or packed.numel() != packed_nbytes(numel):
        raise ValueError(f"packed must be uint8 with {packed_nbytes(numel)} bytes for {numel} bits, "
                         f"got {packed.dtype} with {packed.numel()}")
    bits = (packed.reshape(-1, 1) >> _SHIFTS.to(packed.device)) & 1
    return bits.reshape(-1)[:numel].to(torch.bool)

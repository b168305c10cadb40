"""Fake (meta) implementations of ``torch.ops.signopt.*`` so ``torch.compile`` traces the
fused kernels without graph breaks. Imported by :func:`signopt.build.load` after the library
has registered the schemas (``signopt::step``'s is :func:`signopt.declaration.step_schema`)."""
from __future__ import annotations

import torch
from torch import Tensor

from .declaration import FORMATS, SCALE_TYPES

_FORMATS_BY_ID = {f.id: f for f in FORMATS.values()}


@torch.library.register_fake("signopt::step")
def _step_fake(params, *args, **kwargs) -> Tensor:
    return params[0].new_empty((), dtype=torch.int64)


@torch.library.register_fake("signopt::philox")
def _philox_fake(k0, k1, idx) -> Tensor:
    return idx.new_empty((idx.numel(), 4), dtype=torch.int64)


@torch.library.register_fake("signopt::philox_word0")
def _philox_word0_fake(k0, k1, base, out) -> None:
    return None


@torch.library.register_fake("signopt::encode")
def _encode_fake(x, fmt, block, words):
    f = _FORMATS_BY_ID[fmt]
    n = x.numel()
    scales = x.new_empty((-(-n // block) if f.block_scaled else 0,), dtype=SCALE_TYPES[f.scale])
    codes = x.new_empty(((n + 1) // 2,) if f.packed else x.shape, dtype=f.dtype)
    return codes, scales, x.new_empty(x.shape, dtype=torch.float32)

"""Fake (meta) implementations of ``torch.ops.signopt.*`` so ``torch.compile`` traces the
fused kernels without graph breaks. Imported by :func:`signopt.build.load` after the library
has registered the schemas."""
from __future__ import annotations

import torch
from torch import Tensor


@torch.library.register_fake("signopt::step")
def _step_fake(params, grads, m, v, env, m_scale, v_scale, env_scale, config, hyper, keys, offsets,
               seglens, bias, lr, decay, inv_scale, found_inf) -> Tensor:
    return params[0].new_empty((), dtype=torch.int64)


@torch.library.register_fake("signopt::philox")
def _philox_fake(k0, k1, idx) -> Tensor:
    return idx.new_empty((idx.numel(), 4), dtype=torch.int64)


@torch.library.register_fake("signopt::philox_word0")
def _philox_word0_fake(k0, k1, base, out) -> None:
    return None


_ENCODE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2)


@torch.library.register_fake("signopt::encode")
def _encode_fake(x, fmt, block, words):
    n = x.numel()
    scales = x.new_empty((-(-n // block) if fmt >= 3 else 0,), dtype=torch.float32)
    return x.new_empty(x.shape, dtype=_ENCODE_DTYPES[fmt]), scales, x.new_empty(x.shape, dtype=torch.float32)

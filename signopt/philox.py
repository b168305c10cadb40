"""Philox4x32-10 counter-based random bits, computed exactly as Triton's ``tl.philox``.

Every backend draws its random bits from this stream so that stochastic rules are bitwise
reproducible across the torch reference, the C++/CUDA kernels and the Triton kernels:

* per (step, tensor) key: ``derive_key(seed, step, tensor_index)`` runs one Philox4x32-10 call
  with key ``(seed & 0xffffffff, seed >> 32)`` and counter
  ``(step & 0xffffffff, step >> 32, tensor_index, 0x5349474E)`` and takes output words 0 and 1
  as the new key ``(k0, k1)``; the 64-bit Triton seed is ``k0 | k1 << 32``.
* per element ``i`` of the full (unsharded, flattened) tensor and purpose ``P`` (random bits v2):
  one Philox4x32-10 call serves 4 consecutive elements: counter ``(j mod 2**32, j >> 32, P, 0)``
  with ``j = i >> 2``, and element ``i`` takes output word ``i & 3``. The purposes (stochastic
  sign, state rounding, parameter rounding) are :data:`signopt.declaration.RANDOM_PURPOSES`.
* uniform in [0, 1): ``u = (word >> 8) * 2**-24`` (exact in fp32).

Values are held in int64 tensors in ``[0, 2**32)``; 32x32-bit products are split in 16-bit
halves so nothing overflows int64.
"""
from __future__ import annotations

import torch
from torch import Tensor

try:  # NumPy vectorises the per-tensor key derivation of a step (optional: loops without it)
    import numpy as _np
except ImportError:  # pragma: no cover - torch installs usually have it
    _np = None

MASK32 = 0xFFFFFFFF
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
KEY_DOMAIN = 0x5349474E  # "SIGN": fourth counter word of the key derivation
N_ROUNDS = 10


def _mul_hi_lo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of ``a * b`` for a 32-bit constant ``a`` and uint32 values ``b``."""
    t_lo = (b & 0xFFFF) * a  # < 2**48
    t_hi = (b >> 16) * a  # < 2**48
    mid = ((t_hi & 0xFFFF) << 16) + t_lo  # < 2**49
    hi = (t_hi >> 16) + (mid >> 32)
    return hi & MASK32, mid & MASK32


def philox4x32(k0: int, k1: int, c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor,
               n_rounds: int = N_ROUNDS) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32 with ``n_rounds`` rounds on int64 tensors holding uint32 values."""
    for _ in range(n_rounds):
        hi_b, lo_b = _mul_hi_lo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def philox4x32_ints(k0: int, k1: int, c0: int, c1: int, c2: int, c3: int,
                    n_rounds: int = N_ROUNDS) -> tuple[int, int, int, int]:
    """Philox4x32 on Python ints (host-side key derivation; no tensor launches)."""
    for _ in range(n_rounds):
        prod_b = PHILOX_ROUND_B * c2
        prod_a = PHILOX_ROUND_A * c0
        c0, c1, c2, c3 = ((prod_b >> 32) ^ c1 ^ k0, prod_b & MASK32,
                          (prod_a >> 32) ^ c3 ^ k1, prod_a & MASK32)
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def derive_key(seed: int, step: int, tensor_index: int) -> tuple[int, int]:
    """Per-(step, tensor) Philox key: words 0 and 1 of one Philox call keyed by ``seed``."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    w0, w1, _, _ = philox4x32_ints(seed & MASK32, (seed >> 32) & MASK32, step & MASK32,
                                   (step >> 32) & MASK32, tensor_index & MASK32, KEY_DOMAIN)
    return w0, w1


VECTOR_MIN = 16  # below this many keys the Python loop is faster than NumPy's call overhead


def derive_keys(seed: int, steps: list[int], indices: list[int]) -> list[int]:
    """The keys ``derive_key(seed, t, i)`` for ``t, i in zip(steps, indices)``, flat
    (``[k0, k1, k0, k1, ...]``, as the kernels take them): from :data:`VECTOR_MIN` keys on, in
    one C++ call where the extension is loaded (``signopt::derive_keys``, the same Philox), else
    with the same uint32 arithmetic on NumPy uint64 arrays (32x32-bit products fit exactly;
    ``steps`` and ``indices`` are int64 values, viewed as two's complement as Python's
    ``&``/``>>`` treat negative ints)."""
    if len(steps) < VECTOR_MIN:
        return [k for t, i in zip(steps, indices) for k in derive_key(seed, t, i)]
    op = None if torch.compiler.is_compiling() else loaded_op("derive_keys")
    if op is not None:
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        return op(seed & MASK32, seed >> 32, KEY_DOMAIN, steps, indices)
    if _np is None:
        return [k for t, i in zip(steps, indices) for k in derive_key(seed, t, i)]
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    u64 = _np.uint64
    mask, s32 = u64(MASK32), u64(32)
    t = _np.array(steps, dtype=_np.int64).view(u64)
    c0, c1 = t & mask, t >> s32
    c2 = _np.array(indices, dtype=_np.int64).view(u64) & mask
    c3 = u64(KEY_DOMAIN)
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    round_a, round_b = u64(PHILOX_ROUND_A), u64(PHILOX_ROUND_B)
    for _ in range(N_ROUNDS):
        prod_b = round_b * c2
        prod_a = round_a * c0
        c0, c1, c2, c3 = ((prod_b >> s32) ^ c1 ^ u64(k0), prod_b & mask,
                          (prod_a >> s32) ^ c3 ^ u64(k1), prod_a & mask)
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return _np.stack([c0, c1], axis=1).reshape(-1).tolist()


def loaded_op(name: str):
    """``torch.ops.signopt.<name>`` when the C++ extension is already loaded (never builds it)."""
    try:
        return getattr(torch.ops.signopt, name)
    except (AttributeError, RuntimeError):
        return None


def triton_seed(key: tuple[int, int]) -> int:
    """The 64-bit seed that ``tl.philox`` splits back into ``key``."""
    return key[0] | (key[1] << 32)


def element_word(key: tuple[int, int], indices: Tensor, purpose: int) -> Tensor:
    """The random word of each element index in ``indices`` (int64, full-tensor indices) for
    ``purpose``: word ``i & 3`` of the Philox call on counter ``(j mod 2**32, j >> 32, purpose,
    0)``, ``j = i >> 2``. Where ``indices`` is a run of consecutive indices (the usual case: a
    tensor or shard), each call is made once and serves its 4 elements."""
    flat = indices.reshape(-1)
    n = flat.numel()
    if n == 0:
        return torch.zeros_like(indices)
    first = int(flat[0])
    if torch.equal(flat, torch.arange(first, first + n, dtype=flat.dtype, device=flat.device)):
        j = torch.arange(first >> 2, ((first + n - 1) >> 2) + 1, dtype=torch.int64, device=flat.device)
        words = torch.stack(_calls(key, j, purpose), dim=1).reshape(-1)  # words of elements 4*j0 ...
        start = first - 4 * (first >> 2)
        return words[start:start + n].reshape(indices.shape)
    words = torch.stack(_calls(key, flat >> 2, purpose), dim=1)
    return words.gather(1, (flat & 3).reshape(-1, 1)).reshape(indices.shape)


def _calls(key: tuple[int, int], j: Tensor, purpose: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four output words of the Philox calls on counters ``(j mod 2**32, j >> 32, purpose, 0)``."""
    lo = j & MASK32
    hi = (j >> 32) & MASK32
    return philox4x32(key[0], key[1], lo, hi, torch.full_like(lo, purpose), torch.zeros_like(lo))


def uniform_from_word(word: Tensor) -> Tensor:
    """``u = (word >> 8) * 2**-24`` in fp32, exactly."""
    return (word >> 8).to(torch.float32) * (2.0 ** -24)

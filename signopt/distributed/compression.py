"""The math of 1-bit sign compression, one flat bucket at a time (no communication here).

Each rank ``w`` sends the packed bits of a vector ``v_w`` (d elements) and its scales
``s_w``: one per bucket (``granularity="bucket"``) or one per parameter tensor in the bucket
(``"tensor"``; below, ``||.||_1/d`` and the products are then taken per tensor). Every rank
decodes all payloads identically (ranks summed in rank order), so all ranks end with
bit-identical results.

error feedback (EF-SignSGD, Karimireddy et al. 2019, arXiv 1901.09847)::

    q_w = g_w + e_w                      (fp32, or fp64 for fp64 gradients)
    s_w = ||q_w||_1 / d                  (sum in fp64, rounded once)
    b_w = +1 where q_w >= 0 else -1      (a zero is sent as +1: one bit has no zero)
    D_w = s_w * b_w ;  e_w <- q_w - D_w  (the error keeps whatever was not sent, zeros included)
    out = (D_0 + D_1 + ... + D_{W-1}) / W

    Invariant: with SGD at a fixed lr, x_t - lr * mean_w(e_w,t) follows plain SGD on the
    averaged gradient (exact in real arithmetic; fp rounding of q, D, e and x accumulates).

majority vote (Bernstein et al. 2019, arXiv 1810.05291)::

    m_w <- beta*m_w + (1-beta)*g_w      (beta = momentum; beta = 0 sends sign(g_w))
    s_w = ||m_w||_1 / d
    b_w = sign(m_w); a zero is sent as (-1)**(i + w) (alternating by element index i and rank)
    out = sign(b_0 + ... + b_{W-1}) * (s_0 + ... + s_{W-1}) / W      (a tie gives 0)

    With an even W a coordinate that is zero on every rank votes exactly 0; with an odd W it
    votes +-1 alternating along the bucket (one bit per element cannot carry "zero").

Non-finite values: a rank whose bucket holds NaN/inf sends a non-finite scale, so every rank
decodes a non-finite result (GradScaler then skips the step) and no rank commits its new
error/momentum for that bucket.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .packing import pack_bits, packed_nbytes, unpack_bits

MODES = ("error_feedback", "majority_vote")
GRANULARITIES = ("bucket", "tensor")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 buckets compute in fp64, every other float dtype in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def segment_scales(v: Tensor, sizes: list[int]) -> Tensor:
    """``||v_k||_1 / d_k`` of each consecutive segment ``k`` of ``v`` (``sizes`` sum to ``d``),
    accumulated in fp64 and rounded once to ``v.dtype``: shape ``[len(sizes)]``."""
    sums = [seg.abs().sum(dtype=torch.float64) / max(seg.numel(), 1) for seg in v.split(sizes)]
    return torch.stack(sums).to(v.dtype)


def expand(scales: Tensor, sizes: list[int]) -> Tensor:
    """One scale per element: segment ``k``'s scale repeated ``sizes[k]`` times (a 0-d tensor
    that broadcasts, for a single segment)."""
    if len(sizes) == 1:
        return scales.reshape(())
    return scales.repeat_interleave(torch.tensor(sizes, device=scales.device), output_size=sum(sizes))


def signed(bits: Tensor, magnitude: Tensor) -> Tensor:
    """``magnitude * (+1 where bits else -1)``, exactly (a sign flip, no multiplication)."""
    return torch.where(bits, magnitude, -magnitude)


def vote_bits(m: Tensor, rank: int) -> Tensor:
    """``sign(m) > 0`` with zeros sent as ``(-1)**(i + rank)``."""
    parity = (torch.arange(m.numel(), device=m.device) + rank) % 2 == 0
    return torch.where(m == 0, parity, m > 0)


def encode(scales: Tensor, bits: Tensor) -> Tensor:
    """One rank's payload: the scales' bytes, then the packed bits (``uint8``)."""
    return torch.cat([scales.reshape(-1).view(torch.uint8), pack_bits(bits)])


def payload_nbytes(numel: int, n_scales: int, dtype: torch.dtype) -> int:
    """Bytes one rank sends for a bucket of ``numel`` elements of ``dtype`` with ``n_scales``."""
    return n_scales * torch.empty((), dtype=compute_dtype(dtype)).element_size() + packed_nbytes(numel)


def decode(payloads: Tensor, world_size: int, numel: int, n_scales: int,
           dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Scales ``[W, k]`` (``dtype``) and sign bits ``[W, d]`` (bool, True = +1) of the
    gathered payloads."""
    rows = payloads.reshape(world_size, -1)
    width = n_scales * torch.empty((), dtype=dtype).element_size()
    # reshape(-1) gives unit strides (with one rank, [:, :width] is a view whose row stride
    # is the payload's length, which .view(dtype) refuses); with several it copies
    scales = rows[:, :width].reshape(-1).view(dtype).reshape(world_size, n_scales)
    bits = unpack_bits(rows[:, width:].reshape(-1), rows[:, width:].numel() * 8)
    return scales, bits.reshape(world_size, -1)[:, :numel]


def ef_local(g: Tensor, e: Tensor, sizes: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Error feedback on one rank: ``(scales, bits, new_error)``."""
    q = g + e
    scales = segment_scales(q, sizes)
    bits = q >= 0
    delta = signed(bits, expand(scales, sizes))
    return scales, bits, q - delta


def ef_combine(scales: Tensor, bits: Tensor, sizes: list[int]) -> Tensor:
    """``(s_0*b_0 + ... + s_{W-1}*b_{W-1}) / W``, summed in rank order."""
    out = signed(bits[0], expand(scales[0], sizes))
    for w in range(1, scales.shape[0]):
        out = out + signed(bits[w], expand(scales[w], sizes))
    return out / scales.shape[0]


def vote_combine(scales: Tensor, bits: Tensor, sizes: list[int]) -> Tensor:
    """``sign(sum of signs) * mean scale``, scales summed in rank order (ties give 0)."""
    world = scales.shape[0]
    votes = bits.sum(dim=0, dtype=torch.int32) * 2 - world  # sum of the +-1 votes, exactly
    total = scales[0]
    for w in range(1, world):
        total = total + scales[w]
    return torch.sign(votes).to(scales.dtype) * expand(total / world, sizes)

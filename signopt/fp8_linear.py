"""An FP8 linear layer for training experiments: E4M3 weights and activations, E5M2 output
gradients, per-tensor scaling, fp32 accumulation.

Per GEMM operand ``x`` (per tensor, as in :mod:`signopt.state_format` with one block)::

    s = max(amax(x) * (1/Qmax), 2**-126);  q = round_nearest_even(clamp(x / s, ±Qmax))

(rounding from the fp32 bits, :func:`signopt.casting.round_to_format`). The three GEMMs::

    forward  y  = (q_x s_x) (q_w s_w)^T        E4M3 x E4M3
    dgrad    dx = (q_g s_g) (q_w s_w)          E5M2 x E4M3
    wgrad    dw = (q_g s_g)^T (q_x s_x)        E5M2 x E4M3

each run either through ``torch._scaled_mm`` (``"scaled_mm"``) or by quantise-dequantise
emulation: the FP8 codes decoded to fp32 and multiplied by an fp32 matmul (``"emulated"``).
Both multiply the same FP8 values exactly (a product of two FP8 values is exact in fp32), so
they differ only by fp32 accumulation order. :func:`select_paths` times both on given shapes.
The layer saves the FP8 codes (not the high-precision input) for backward.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .casting import E4M3, E5M2, FloatFormat, round_to_format

MIN_SCALE = 2.0 ** -126
GEMMS = ("forward", "dgrad", "wgrad")
PATHS = ("scaled_mm", "emulated")


def quantize(x: Tensor, fmt: FloatFormat) -> tuple[Tensor, Tensor]:
    """Per-tensor scaled FP8 codes (``fmt.dtype``) and the fp32 0-dim scale of ``x``."""
    xf = x.float()
    amax = xf.abs().amax()
    inv_qmax = torch.tensor(1.0 / fmt.max_finite, dtype=torch.float32)
    scale = torch.clamp(amax * inv_qmax, min=MIN_SCALE)
    y = torch.clamp(xf * (torch.ones_like(scale) / scale), -fmt.max_finite, fmt.max_finite)
    return round_to_format(y, fmt).to(fmt.dtype), scale


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """fp32 values ``q * s``."""
    return q.to(torch.float32) * scale


def fp8_gemm(a: Tensor, sa: Tensor, b: Tensor, sb: Tensor, path: str) -> Tensor:
    """``(a*sa) @ (b*sb)`` in fp32 for FP8 codes ``a`` [M, K] and ``b`` [K, N]."""
    if path == "scaled_mm":
        # _scaled_mm wants a row-major and b column-major.
        return torch._scaled_mm(a.contiguous(), b.t().contiguous().t(), scale_a=sa.float(),
                                scale_b=sb.float(), out_dtype=torch.float32)
    if path == "emulated":
        return (a.to(torch.float32) @ b.to(torch.float32)) * (sa * sb)
    raise ValueError(f"path must be one of {PATHS}, got {path!r}")


@dataclass
class FP8Paths:
    """Which implementation each GEMM uses; ``measured`` holds GFLOP/s from :func:`select_paths`."""

    forward: str = "emulated"
    dgrad: str = "emulated"
    wgrad: str = "emulated"
    measured: dict = field(default_factory=dict)


class FP8LinearFunction(torch.autograd.Function):
    """``y = x W^T`` with E4M3 x/W, E5M2 grad-output, fp32 accumulation (no bias)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, paths: FP8Paths) -> Tensor:  # type: ignore[override]
        lead = x.shape[:-1]
        qx, sx = quantize(x.reshape(-1, x.shape[-1]), E4M3)
        qw, sw = quantize(weight, E4M3)
        y = fp8_gemm(qx, sx, qw.t(), sw, paths.forward)
        ctx.save_for_backward(qx, sx, qw, sw)
        ctx.paths, ctx.x_dtype, ctx.w_dtype, ctx.lead = paths, x.dtype, weight.dtype, lead
        return y.to(x.dtype).reshape(*lead, weight.shape[0])

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        qx, sx, qw, sw = ctx.saved_tensors
        qg, sg = quantize(gy.reshape(-1, gy.shape[-1]), E5M2)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = fp8_gemm(qg, sg, qw, sw, ctx.paths.dgrad).to(ctx.x_dtype).reshape(*ctx.lead, qw.shape[1])
        if ctx.needs_input_grad[1]:
            dw = fp8_gemm(qg.t(), sg, qx, sx, ctx.paths.wgrad).to(ctx.w_dtype)
        return dx, dw, None


class FP8Linear(torch.nn.Module):
    """Drop-in for a bias-free ``nn.Linear`` whose GEMMs run in FP8 (shares ``weight``)."""

    def __init__(self, weight: torch.nn.Parameter, paths: FP8Paths | None = None) -> None:
        super().__init__()
        self.weight = weight
        self.paths = paths if paths is not None else FP8Paths()

    def forward(self, x: Tensor) -> Tensor:
        return FP8LinearFunction.apply(x, self.weight, self.paths)

    def extra_repr(self) -> str:
        return (f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, fwd={self.paths.forward}, "
                f"dgrad={self.paths.dgrad}, wgrad={self.paths.wgrad}")


def convert_linears(module: torch.nn.Module, paths: FP8Paths, skip: tuple[str, ...] = ()) -> list[str]:
    """Replace every bias-free ``nn.Linear`` under ``module`` (names not containing any of
    ``skip``) by :class:`FP8Linear`, sharing ``paths``; returns the replaced names."""
    done = []
    for name, child in list(module.named_modules()):
        for cname, c in list(child.named_children()):
            full = f"{name}.{cname}" if name else cname
            if isinstance(c, torch.nn.Linear) and c.bias is None and not any(s in full for s in skip):
                setattr(child, cname, FP8Linear(c.weight, paths))
                done.append(full)
    return done


def _gflops(fn, flops: float, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def select_paths(m: int, k: int, n: int, min_ratio: float = 0.5) -> FP8Paths:
    """Time each GEMM of an [m, k] x [n, k]^T layer both ways; use ``_scaled_mm`` for a GEMM
    when its throughput is at least ``min_ratio`` times the emulation's (which includes the
    decode of both operands), else emulation. GFLOP/s land in ``paths.measured``."""
    gen = torch.Generator().manual_seed(0)
    x, w, g = (torch.randn(s, generator=gen) for s in ((m, k), (n, k), (m, n)))
    qx, sx = quantize(x, E4M3)
    qw, sw = quantize(w, E4M3)
    qg, sg = quantize(g, E5M2)
    operands = {"forward": (qx, sx, qw.t(), sw), "dgrad": (qg, sg, qw, sw), "wgrad": (qg.t(), sg, qx, sx)}
    paths = FP8Paths()
    for gemm, (a, sa, b, sb) in operands.items():
        flops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
        rates = {p: _gflops(lambda p=p: fp8_gemm(a, sa, b, sb, p), flops) for p in PATHS}
        paths.measured[gemm] = rates
        setattr(paths, gemm, "scaled_mm" if rates["scaled_mm"] >= min_ratio * rates["emulated"] else "emulated")
    return paths

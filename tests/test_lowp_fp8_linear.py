"""FP8 linear layer (signopt.fp8_linear): forward/backward against an fp32 reference within
FP8 error bounds, and quantise-dequantise emulation against ``torch._scaled_mm``."""
import pytest
import torch

from signopt.casting import E4M3, E5M2
from signopt.fp8_linear import (FP8Linear, FP8Paths, convert_linears, dequantize, fp8_gemm,
                                quantize, select_paths)

U4, U5 = 2.0 ** -4, 2.0 ** -3  # relative error bound of nearest rounding in the normal range


def _qerr_bound(x: torch.Tensor, fmt, u: float) -> torch.Tensor:
    """Elementwise bound on |Q(x) - x| for per-tensor scaled nearest rounding."""
    scale = x.abs().amax() / fmt.max_finite
    half_subnormal = 2.0 ** (fmt.emin - fmt.mantissa_bits - 1)
    return u * x.abs() + half_subnormal * scale


def _product_bound(a, ea, b, eb):
    """Bound on |Qa Qb - a b| given elementwise bounds ea, eb: |a|eb + ea|b| + ea eb, plus fp32
    accumulation (k * 2**-24 relative to |a||b|)."""
    k = a.shape[1]
    return a.abs() @ eb + ea @ b.abs() + ea @ eb + (a.abs() @ b.abs()) * (k * 2.0 ** -23)


@pytest.mark.parametrize("fmt,u", [(E4M3, U4), (E5M2, U5)])
def test_quantize_error_bound(fmt, u):
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * 3
    q, s = quantize(x, fmt)
    assert q.dtype == fmt.dtype
    err = (dequantize(q, s) - x).abs()
    assert torch.all(err <= _qerr_bound(x, fmt, u))
    assert dequantize(q, s).abs().max() == pytest.approx(x.abs().max().item(), rel=u)
    zq, zs = quantize(torch.zeros(4, 4), fmt)
    assert torch.all(dequantize(zq, zs) == 0)


@pytest.mark.parametrize("path", ["emulated", "scaled_mm"])
def test_forward_backward_vs_fp32(path):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 32, generator=gen, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(24, 32, generator=gen) * 0.1)
    gy = torch.randn(2, 16, 24, generator=gen)
    layer = FP8Linear(w, FP8Paths(path, path, path))
    y = layer(x)
    y.backward(gy)
    x2, gy2 = x.detach().reshape(-1, 32), gy.reshape(-1, 24)
    ex, ew, eg = _qerr_bound(x2, E4M3, U4), _qerr_bound(w.detach(), E4M3, U4), _qerr_bound(gy2, E5M2, U5)
    wd = w.detach()
    # forward: y = x W^T
    assert torch.all((y.detach().reshape(-1, 24) - x2 @ wd.t()).abs() <= _product_bound(x2, ex, wd.t(), ew.t()))
    # dgrad: dx = gy W
    assert torch.all((x.grad.reshape(-1, 32) - gy2 @ wd).abs() <= _product_bound(gy2, eg, wd, ew))
    # wgrad: dW = gy^T x
    assert torch.all((w.grad - gy2.t() @ x2).abs() <= _product_bound(gy2.t(), eg.t(), x2, ex))
    # and the error is FP8-sized, not garbage
    rel = (y.detach().reshape(-1, 24) - x2 @ wd.t()).norm() / (x2 @ wd.t()).norm()
    assert 1e-4 < rel < 0.1


@pytest.mark.parametrize("m,k,n", [(16, 32, 48), (33, 17, 5), (64, 128, 96)])
def test_emulation_matches_scaled_mm(m, k, n):
    gen = torch.Generator().manual_seed(m)
    x, w, g = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(m, n, generator=gen)
    qx, sx = quantize(x, E4M3)
    qw, sw = quantize(w, E4M3)
    qg, sg = quantize(g, E5M2)
    for a, sa, b, sb in ((qx, sx, qw.t(), sw), (qg, sg, qw, sw), (qg.t(), sg, qx, sx)):
        emu = fp8_gemm(a, sa, b, sb, "emulated")
        ref = fp8_gemm(a, sa, b, sb, "scaled_mm")
        mag = (a.float().abs() @ b.float().abs()) * (sa * sb)
        assert torch.all((emu - ref).abs() <= mag * (a.shape[1] * 2.0 ** -23) + 1e-30)


def test_bf16_layer_and_convert():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 16, bias=False), torch.nn.ReLU(),
                              torch.nn.Linear(16, 8, bias=False)).to(torch.bfloat16)
    names = convert_linears(net, FP8Paths())
    assert names == ["0", "2"] and isinstance(net[0], FP8Linear)
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    y = net(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and net[0].weight.grad.dtype == torch.bfloat16
    assert torch.isfinite(net[0].weight.grad.float()).all()


def test_select_paths_reports_rates():
    p = select_paths(32, 32, 32)
    for gemm in ("forward", "dgrad", "wgrad"):
        assert getattr(p, gemm) in ("scaled_mm", "emulated")
        assert set(p.measured[gemm]) == {"scaled_mm", "emulated"}

"""The Triton backend's numerics helpers on edge values, and its plumbing.

Helpers (``signopt.kernels.numerics`` / ``state_io``) run in a one-program test kernel under
the interpreter and are compared bit for bit with :mod:`signopt.casting` /
:mod:`signopt.state_format` on ties, subnormals, the largest finite values, inf and NaN.
Plumbing: one update launch for any number of tensors, no triton import from ``import
signopt``, clear availability errors.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import signopt
from signopt import backends as backend_registry
from signopt import casting

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def kernels():
    try:
        backend_registry.load("triton")
    except backend_registry.BackendUnavailable as exc:
        pytest.skip(f"triton backend unavailable: {exc}")
    sys.path.insert(0, str(Path(__file__).parent / "triton_helpers"))
    try:
        import cast_kernels
    finally:
        sys.path.pop(0)
    return cast_kernels


def edge_values() -> torch.Tensor:
    f = torch.finfo(torch.float32)
    specials = [0.0, -0.0, 1.0, -1.0, 1.5, 2.5, 448.0, 464.0, 480.0, 57344.0, 61440.0, 65504.0,
                65519.0, 65520.0, 1e-3, 2.0 ** -6, 2.0 ** -9, 2.0 ** -10, 2.0 ** -14, 2.0 ** -16,
                2.0 ** -17, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -10, f.max, -f.max, f.tiny,
                f.tiny / 3, 3.3895313892515355e38, float("inf"), float("-inf"), float("nan")]
    gen = torch.Generator().manual_seed(0)
    rnd = torch.randn(400, generator=gen) * torch.exp2(torch.randint(-30, 20, (400,), generator=gen).float())
    # values halfway between neighbours of bf16 / E4M3 grids (ties)
    ties = torch.tensor([1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -4, 1.0 + 3 * 2.0 ** -4,
                         1.0 + 2.0 ** -3, 2.0 ** -7 * 1.5, 2.0 ** -10 * 1.5])
    x = torch.cat([torch.tensor(specials), ties, -ties, rnd])
    return x.to(torch.float32)


def words_for(n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 2**32, (n,), generator=gen, dtype=torch.int64)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int16 if a.element_size() == 2 else torch.uint8).to(torch.int32),
                       b.view(torch.int16 if b.element_size() == 2 else torch.uint8).to(torch.int32))


@pytest.mark.parametrize("stochastic", [False, True])
def test_bf16_rounding_bits(kernels, stochastic):
    x = edge_values()
    w = words_for(x.numel())
    got = kernels.bf16(x, w, stochastic)
    want = casting.fp32_to_bf16_stochastic(x, w) if stochastic else casting.fp32_to_bf16_nearest(x)
    assert _same_bits(got, want)


@pytest.mark.parametrize("fmt", ["fp16", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("stochastic", [False, True])
def test_format_rounding(kernels, fmt, stochastic):
    spec = {"fp16": casting.FP16, "fp8_e4m3": casting.E4M3, "fp8_e5m2": casting.E5M2}[fmt]
    x = edge_values()
    w = words_for(x.numel())
    got = kernels.round_format(x, w, spec, stochastic)
    want = casting.round_to_format(x, spec, w if stochastic else None)
    assert torch.equal(got.isnan(), want.isnan())
    keep = ~want.isnan()
    assert torch.equal(got[keep], want[keep])
    assert torch.equal(torch.signbit(got[keep]), torch.signbit(want[keep]))


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_codes_and_values(kernels, fmt):
    spec = {"fp8_e4m3": casting.E4M3, "fp8_e5m2": casting.E5M2}[fmt]
    x = edge_values()
    y = casting.round_to_format(torch.clamp(x, -spec.max_finite, spec.max_finite), spec)
    codes = kernels.fp8_codes(y, spec)
    assert torch.equal(codes, y.to(spec.dtype).view(torch.uint8))
    all_codes = torch.arange(256, dtype=torch.int64).to(torch.uint8)
    values = kernels.fp8_values(all_codes, spec)
    want = all_codes.view(spec.dtype).to(torch.float32)
    assert torch.equal(values.isnan(), want.isnan())
    keep = ~want.isnan()
    assert torch.equal(values[keep], want[keep])


class _Counting:
    """Wraps a jitted kernel and counts its launches."""

    def __init__(self, fn):
        self.fn, self.launches = fn, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.fn[grid]


def test_one_update_launch_for_many_tensors(kernels, monkeypatch):
    from signopt.kernels import launch

    counting = _Counting(launch.passes.update_kernel)
    monkeypatch.setattr(launch.passes, "update_kernel", counting)
    ps = [torch.randn(3 + i % 5) for i in range(150)]
    ref = [p.clone() for p in ps]
    opt = signopt.Lion(ps, lr=0.1, weight_decay=0.1, backend="triton")
    ropt = signopt.Lion(ref, lr=0.1, weight_decay=0.1, backend="torch")
    for p, q in zip(ps, ref):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    opt.step()
    ropt.step()
    assert counting.launches == 1
    assert opt.last_step_backends == ["triton"]
    assert all(torch.equal(p, q) for p, q in zip(ps, ref))


def test_noncontiguous_param_and_grad(kernels):
    base = torch.randn(6, 8)
    p = base.t()  # non-contiguous view
    q = p.detach().clone()
    opt = signopt.Lion([p], lr=0.1, backend="triton")
    ropt = signopt.Lion([q], lr=0.1, backend="torch")
    g = torch.randn(6, 8).t()
    p.grad, q.grad = g, g.clone()
    opt.step()
    ropt.step()
    assert torch.equal(p, q) and torch.equal(opt.state[p]["m"], ropt.state[q]["m"])


def test_import_signopt_does_not_import_triton():
    # (constructing any torch.optim.Optimizer imports torch._dynamo, which probes triton itself)
    code = "import sys, signopt; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_cpu_without_interpreter_is_unavailable():
    code = ("import signopt, torch\n"
            "try:\n    signopt.Lion([torch.zeros(2)], backend='triton')\n"
            "except ValueError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=120)
    if torch.cuda.is_available():
        assert "CPU" in out.stdout
    else:
        assert "TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr

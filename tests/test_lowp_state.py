"""Low-precision state: FP8 block scaling, stochastic rounding, bf16/fp16 parameter writes,
state_dict round trips and format conversion (contract: docs/numerics.md)."""
import io
import math

import pytest
import torch
from hypothesis import given, strategies as st

import signopt
from signopt import declaration, state_format, state_layout
from signopt.casting import (E4M3, E5M2, FP16, fp32_to_bf16_stochastic, format_ulp,
                             round_to_format)

FP8_FORMATS = [E4M3, E5M2]


def _words(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**32, (n,), generator=g, dtype=torch.int64)


def _values(n: int, seed: int, spread: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g) * spread)


@pytest.mark.parametrize("fmt", FP8_FORMATS, ids=lambda f: f.name)
@given(seed=st.integers(0, 2**31), block=st.sampled_from([1, 7, 32, 256]),
       n=st.integers(1, 700), spread=st.sampled_from([0.0, 1.0, 6.0]))
def test_fp8_round_trip_error_bound(fmt, seed, block, n, spread):
    x = _values(n, seed, spread)
    codes, scale = state_format.fp8_encode(x, fmt, block)
    xhat = state_format.fp8_decode(codes, scale, block)
    s = scale.repeat_interleave(block)[:n]
    # relative 2**-(M+1) from the FP8 rounding (plus fp32 slack for x*inv and q*s), and half a
    # subnormal step of the scaled grid below the normal range
    rel = 2.0 ** -(fmt.mantissa_bits + 1) * (1 + 2.0 ** -20)
    floor = 2.0 ** (fmt.emin - fmt.mantissa_bits - 1) * s * (1 + 2.0 ** -20)
    err = (xhat - x).abs()
    assert torch.all(err <= torch.maximum(rel * x.abs(), floor) + 2.0 ** -23 * x.abs())


@pytest.mark.parametrize("fmt", FP8_FORMATS, ids=lambda f: f.name)
def test_block_absmax_lands_on_qmax(fmt):
    block = 64
    x = _values(block * 300, 1)
    codes, scale = state_format.fp8_encode(x, fmt, block)
    q = codes.to(torch.float32).reshape(-1, block).abs()
    top = q.amax(dim=1)
    below = fmt.max_finite - 2.0 ** (math.floor(math.log2(fmt.max_finite)) - fmt.mantissa_bits)
    assert torch.all((top == fmt.max_finite) | (top == below))
    assert (top == fmt.max_finite).float().mean() > 0.5


@pytest.mark.parametrize("fmt", FP8_FORMATS, ids=lambda f: f.name)
def test_all_zero_block_stays_zero(fmt):
    x = torch.zeros(300)
    x[256:] = torch.randn(44)
    codes, scale = state_format.fp8_encode(x, fmt, 256)
    assert scale[0].item() == 2.0 ** -126
    xhat = state_format.fp8_decode(codes, scale, 256)
    assert torch.all(xhat[:256] == 0) and torch.isfinite(xhat).all()


@pytest.mark.parametrize("fmt", FP8_FORMATS, ids=lambda f: f.name)
def test_nonfinite_values_do_not_spoil_their_block(fmt):
    x = _values(64, 3, 1.0)
    x[5], x[9], x[11] = float("nan"), float("inf"), -float("inf")
    codes, scale = state_format.fp8_encode(x, fmt, 64)
    xhat = state_format.fp8_decode(codes, scale, 64)
    finite = torch.ones(64, dtype=torch.bool)
    finite[[5, 9, 11]] = False
    ref_codes, ref_scale = state_format.fp8_encode(torch.where(finite, x, 0.0), fmt, 64)
    assert torch.equal(scale, ref_scale)
    assert torch.equal(xhat[finite], state_format.fp8_decode(ref_codes, ref_scale, 64)[finite])
    assert torch.isnan(xhat[5])
    top = fmt.max_finite * scale[0]
    assert xhat[9] == top and xhat[11] == -top


@pytest.mark.parametrize("fmt", FP8_FORMATS + [FP16], ids=lambda f: f.name)
def test_stochastic_rounding_gives_a_neighbour(fmt):
    x = torch.clamp(_values(20000, 5, 3.0), -fmt.max_finite, fmt.max_finite)
    r = round_to_format(x, fmt, _words(x.numel(), 6))
    ulp = format_ulp(x, fmt)
    lo = torch.floor(x.abs() / ulp) * ulp
    assert torch.all((r.abs() == lo) | (r.abs() == torch.clamp(lo + ulp, max=fmt.max_finite)))
    assert torch.equal(r.to(fmt.dtype).to(torch.float32), r)  # exactly representable


@pytest.mark.parametrize("fmt", FP8_FORMATS + [FP16], ids=lambda f: f.name)
def test_stochastic_rounding_is_unbiased(fmt):
    """Pooled over 64 values x 4096 draws: mean error within 6 sigma of zero per value, and
    the standardised errors' pooled mean within 6/sqrt(64)."""
    x = torch.clamp(_values(64, 7, 2.0), -fmt.max_finite / 2, fmt.max_finite / 2)
    draws = 4096
    xs = x.repeat(draws)
    r = round_to_format(xs, fmt, _words(xs.numel(), 8)).reshape(draws, -1)
    ulp = format_ulp(x, fmt)
    frac = (x.abs() / ulp) - torch.floor(x.abs() / ulp)
    sigma = ulp * torch.sqrt(frac * (1 - frac)) / math.sqrt(draws)
    err = r.double().mean(0) - x.double()
    assert torch.all(err.abs() <= 6 * sigma.double() + 1e-12)
    z = err[sigma > 0] / sigma[sigma > 0].double()
    assert abs(z.mean().item()) <= 6 / math.sqrt(z.numel())


def test_bf16_stochastic_rounding_unbiased_and_never_overflows():
    x = _values(64, 9, 2.0)
    draws = 4096
    r = fp32_to_bf16_stochastic(x.repeat(draws), _words(64 * draws, 10)).float().reshape(draws, -1)
    bits = x.view(torch.int32)
    lo = (bits & ~0xFFFF).view(torch.float32)
    hi_gap = (lo.abs() * 2.0 ** -7)
    assert torch.all((r == lo) | ((r - lo).abs() <= hi_gap * 1.0001))
    frac = ((x - lo).abs() / hi_gap).clamp(0, 1)
    sigma = hi_gap * torch.sqrt(frac * (1 - frac)) / math.sqrt(draws)
    assert torch.all((r.double().mean(0) - x.double()).abs() <= 6 * sigma.double() + 1e-30)
    big = torch.full((1000,), 3.3895313e38)  # the largest finite bf16 is 3.3895314e38
    out = fp32_to_bf16_stochastic(big, _words(1000, 11))
    assert torch.isfinite(out).all()
    nan = fp32_to_bf16_stochastic(torch.tensor([float("nan")]), _words(1, 12))
    assert torch.isnan(nan).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_param_stochastic_rounding_keeps_expected_movement(dtype):
    """lr=1e-4 on |p|~0.05: a nearest-rounded bf16 write drops the step; SR keeps it on average."""
    n, steps, lr = 4096, 20, 1e-4
    start = torch.full((n,), 0.05).to(dtype)
    moved = {}
    for rounding in ("nearest", "stochastic"):
        p = torch.nn.Parameter(start.clone())
        opt = signopt.SignSGD([p], lr=lr, param_rounding=rounding, seed=3)
        for _ in range(steps):
            p.grad = torch.ones(n, dtype=dtype)
            opt.step()
        moved[rounding] = (start.float() - p.detach().float()).mean().item()
    expected = steps * lr
    if dtype == torch.bfloat16:
        assert moved["nearest"] == 0.0
    assert abs(moved["stochastic"] - expected) < 0.05 * expected


@pytest.mark.parametrize("state_dtype", ["fp8_e4m3", "fp8_e5m2", "bf16", "mxfp8_e4m3", "mxfp8_e5m2", "fp4_e2m1"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_state_dict_round_trip_bit_identical(state_dtype, rounding):
    torch.manual_seed(0)
    shapes = [(64, 80), (5000,), (3,)]
    grads = [[torch.randn(s) for s in shapes] for _ in range(6)]

    def make():
        ps = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i)))
              for i, s in enumerate(shapes)]
        opt = signopt.Lion(ps, lr=1e-2, weight_decay=0.1, state_dtype=state_dtype,
                           state_rounding=rounding, param_rounding=rounding, seed=5,
                           fp8_min_numel=100)
        return ps, opt

    def run(ps, opt, gs):
        for step in gs:
            for p, g in zip(ps, step):
                p.grad = g.clone()
            opt.step()

    ps_a, opt_a = make()
    run(ps_a, opt_a, grads)
    ps_b, opt_b = make()
    run(ps_b, opt_b, grads[:3])
    buf = io.BytesIO()
    torch.save(opt_b.state_dict(), buf)
    buf.seek(0)
    ps_c, opt_c = make()
    for pc, pb in zip(ps_c, ps_b):
        pc.data.copy_(pb.data)
    opt_c.load_state_dict(torch.load(buf, weights_only=True))
    assert opt_c.state[ps_c[0]]["m"].dtype == declaration.FORMATS[state_dtype].dtype
    assert opt_c.state[ps_c[2]]["m"].dtype == (torch.float32 if declaration.FORMATS[state_dtype].block_scaled
                                                else torch.bfloat16)
    run(ps_c, opt_c, grads[3:])
    for pa, pc in zip(ps_a, ps_c):
        assert torch.equal(pa, pc)
    for pa, pc in zip(ps_a, ps_c):
        for k in opt_a.state[pa]:
            assert torch.equal(opt_a.state[pa][k].view(torch.uint8) if opt_a.state[pa][k].dtype.itemsize == 1
                               else opt_a.state[pa][k], opt_c.state[pc][k].view(torch.uint8)
                               if opt_c.state[pc][k].dtype.itemsize == 1 else opt_c.state[pc][k])


@pytest.mark.parametrize("fmt_name,fmt", [("fp8_e4m3", E4M3), ("fp8_e5m2", E5M2)])
def test_format_conversion_fp32_to_fp8_and_back(fmt_name, fmt):
    """fp32 checkpoint -> FP8 optimizer: within the FP8 round-trip bound; FP8 -> fp32: exact."""
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(50, 100))
    src = signopt.Lion([p], lr=1e-3)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        src.step()
    m32 = src.state[p]["m"].clone()
    dst = signopt.Lion([p], lr=1e-3, state_dtype=fmt_name, state_block=128)
    dst.load_state_dict(src.state_dict())
    assert dst.state[p]["m"].dtype == fmt.dtype
    m8 = state_layout.read(dst.rule(), dst.state[p], declaration.M)
    s = dst.state[p]["m_scale"].repeat_interleave(128)[: m8.numel()].reshape(m8.shape)
    bound = torch.maximum(2.0 ** -(fmt.mantissa_bits + 1) * m32.abs() * (1 + 2.0 ** -20),
                          2.0 ** (fmt.emin - fmt.mantissa_bits - 1) * s) + 2.0 ** -23 * m32.abs()
    assert torch.all((m8 - m32).abs() <= bound)
    back = signopt.Lion([p], lr=1e-3, state_dtype="fp32")
    back.load_state_dict(dst.state_dict())
    assert torch.equal(back.state[p]["m"], m8)
    rebl = signopt.Lion([p], lr=1e-3, state_dtype=fmt_name, state_block=64)
    rebl.load_state_dict(dst.state_dict())
    assert rebl.state[p]["m_scale"].numel() == -(-p.numel() // 64)


@pytest.mark.parametrize("state_dtype", ["fp8_e4m3", "fp8_e5m2", "bf16", "mxfp8_e4m3", "mxfp8_e5m2", "fp4_e2m1"])
@pytest.mark.parametrize("cls", [signopt.Lion, signopt.Signum])
def test_update_uses_fresh_fp32_state(cls, state_dtype):
    """Quantisation only affects later steps: a low-precision step equals the fp32 one when
    both start from the same (representable) state (Signum's sign(m) uses the fresh m)."""
    torch.manual_seed(2)
    p32 = torch.nn.Parameter(torch.randn(8192))
    plp = torch.nn.Parameter(p32.detach().clone())
    o32 = cls([p32], lr=1e-3)
    olp = cls([plp], lr=1e-3, state_dtype=state_dtype)
    for _ in range(3):
        g = torch.randn(8192)
        p32.grad, plp.grad = g.clone(), g.clone()
        o32.step()
        olp.step()
        # re-sync the fp32 optimizer to the decoded low-precision state
        o32.state[p32]["m"].copy_(state_layout.read(olp.rule(), olp.state[plp], declaration.M, tuple(plp.shape)))
        p32.data.copy_(plp.data)
    g = torch.randn(8192)
    p32.grad, plp.grad = g.clone(), g.clone()
    o32.step()
    olp.step()
    assert torch.equal(p32, plp)


def test_state_bytes_per_param():
    params = [torch.nn.Parameter(torch.randn(256, 1024)) for _ in range(4)]
    opt = signopt.Lion(params, lr=1e-4, state_dtype="fp8_e4m3")
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    b = opt.state_bytes()
    assert b["total"] == sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values())
    assert b["per_param"] == pytest.approx(1 + 4 / 256)


def test_found_inf_keeps_fp8_state_bits():
    p = torch.nn.Parameter(torch.randn(5000))
    opt = signopt.Lion([p], lr=1e-3, state_dtype="fp8_e4m3", state_rounding="stochastic", seed=1)
    p.grad = torch.randn(5000)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    p_before = p.detach().clone()
    opt.found_inf = torch.tensor(1.0)
    p.grad = torch.randn(5000)
    opt.step()
    del opt.found_inf
    assert torch.equal(p, p_before)
    for k in ("m", "m_scale"):
        assert torch.equal(before[k].view(torch.uint8) if before[k].dtype.itemsize == 1 else before[k],
                           opt.state[p][k].view(torch.uint8) if before[k].dtype.itemsize == 1 else opt.state[p][k])


def test_invalid_low_precision_options_change_nothing():
    p = torch.nn.Parameter(torch.randn(10))
    for kw, name in [({"state_dtype": "fp8"}, "state_dtype"), ({"state_rounding": "up"}, "state_rounding"),
                     ({"param_rounding": "floor"}, "param_rounding"), ({"state_block": 0}, "state_block"),
                     ({"fp8_min_numel": -1}, "fp8_min_numel")]:
        with pytest.raises(ValueError, match=name):
            signopt.Lion([p], **kw)

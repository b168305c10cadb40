"""FP4 (E2M1) optimizer state with E8M0 block scales: ``state_dtype="fp4_e2m1"`` (MXFP4).

Two 4-bit codes a byte (element 2j in the low nibble of byte j), one power-of-two E8M0 scale per
block (default 32). Expected bytes and values are worked out by hand: E2M1 holds
0, 0.5, 1, 1.5, 2, 3, 4, 6 (emax 2), so the MX scale byte of a block is
``max(exponent field of absmax - 2, 0)``.
"""
from __future__ import annotations

import math

import pytest
import torch

import signopt
from optim_infos import backend_or_skip, run_lion_with_nan_grads, through_checkpoint
from signopt import backends as backend_registry
from signopt import declaration, state_format, state_layout

FMT = "fp4_e2m1"


def _encode(x, block=4, word=None):
    return state_format.encode(torch.tensor(x, dtype=torch.float32), FMT, block, word)


def _decode(codes, scales, n, block=4):
    return state_format.decode(codes, scales, block, (n,))


def test_declared():
    f = declaration.FORMATS[FMT]
    assert f.packed and f.bits == 4 and f.scale == "e8m0" and f.default_block == 32 and f.emax == 2
    assert f.max_finite == 6.0 and f.mantissa_bits == 1 and f.emin == 0


def test_codes_and_nibbles_by_hand():
    # absmax 1 (field 127): byte 125, scale 2**-2; y = 4, 2, -1.2 -> -1 (ulp 0.5: 2.4 -> 2), 0
    codes, scales = _encode([1.0, 0.5, -0.3, 0.0])
    assert scales.tolist() == [125]
    # magnitude codes: 4 -> 0b110, 2 -> 0b100, 1 -> 0b010 (+ sign 0b1000), 0 -> 0
    assert codes.dtype == torch.uint8 and codes.tolist() == [0x46, 0x0A]
    assert _decode(codes, scales, 4).tolist() == [1.0, 0.5, -0.25, 0.0]


@pytest.mark.parametrize("values,scale,expected", [
    ([1.9, 1.0, -1.9, 0.1], 125, [1.5, 1.0, -1.5, 0.125]),          # 7.6 saturates at 6; 0.4 -> 0.5
    ([6.0, 3.0, 0.75, -4.5], 127, [6.0, 3.0, 1.0, -4.0]),           # 0.75: 1.5 ulp -> 2 (even); 4.5: 2.25 ulp -> 2
    ([7.0, 0.0, 0.0, 0.0], 127, [6.0, 0.0, 0.0, 0.0]),              # absmax 7: scale 1, saturates
    ([1.0, 0.0625, 0.1875, -0.0625], 125, [1.0, 0.0, 0.25, -0.0]),  # 0.25 = half the smallest: 0
    ([2.0 ** 40, 2.0 ** 38, 0.0, 0.0], 165, [2.0 ** 40, 2.0 ** 38, 0.0, 0.0]),
    ([0.0, 0.0, 0.0, 0.0], 0, [0.0, 0.0, 0.0, 0.0]),
    ([2.0 ** -130, 0.0, 0.0, 0.0], 0, [0.0, 0.0, 0.0, 0.0]),       # scale 2**-127: 2**-3 -> 0
    ([1.0, float("nan"), float("inf"), -float("inf")], 125, [1.0, 0.0, 1.5, -1.5]),  # NaN -> +0
])
def test_values_by_hand(values, scale, expected):
    codes, scales = _encode(values)
    assert scales.tolist() == [scale]
    assert _decode(codes, scales, 4).tolist() == expected


def test_odd_counts_and_partial_blocks():
    x = torch.tensor([1.0, 0.5, 0.25, -1.0, 4.0], dtype=torch.float32)
    codes, scales = state_format.encode(x, FMT, 4)
    assert codes.numel() == 3 and scales.numel() == 2
    assert codes[2].item() >> 4 == 0  # the pad nibble
    # blocks of 4: absmax 1 (byte 125, scale 2**-2) and 4 (byte 127, scale 1): all exact
    assert scales.tolist() == [125, 127]
    assert torch.equal(state_format.decode(codes, scales, 4, (5,)), x)
    c, s = state_format.encode(x, FMT, 2)  # absmax 1, 1, 4
    assert c.numel() == 3 and s.tolist() == [125, 125, 127]
    assert torch.equal(state_format.decode(c, s, 2, (5,)), x)
    for block in (8, 32, 256):  # one block, absmax 4, scale 1: 0.25 is half the smallest step -> 0
        c, s = state_format.encode(x, FMT, block)
        assert c.numel() == 3 and s.tolist() == [127]
        assert state_format.decode(c, s, block, (5,)).tolist() == [1.0, 0.5, 0.0, -1.0, 4.0]


def test_stochastic_rounding_is_unbiased():
    n = 20000
    base = torch.tensor([1.0, 0.3, -0.123, 0.77], dtype=torch.float32)
    x = base.repeat(n)
    words = torch.randint(0, 2 ** 32, (x.numel(),), generator=torch.Generator().manual_seed(5), dtype=torch.int64)
    codes, scales = state_format.encode(x, FMT, 4, words)
    dec = state_format.decode(codes, scales, 4, (x.numel(),)).reshape(n, 4).double()
    ulp = torch.tensor([0.25, 0.125, 0.125, 0.25], dtype=torch.float64)  # E2M1 ulp times 2**-2
    assert torch.all((dec.mean(0) - base.double()).abs() <= 12 * ulp / math.sqrt(n))
    assert torch.all((dec - base.double()).abs() <= ulp)


@pytest.mark.parametrize("kw", [{"state_dtype": "bf16", "state_scale": "e4m3"},
                                {"state_dtype": "mxfp8_e4m3", "state_scale": "e8m0"},
                                {"state_dtype": FMT, "state_scale": "fp32"}])
def test_bad_state_scale_raises_naming_the_option(kw):
    p = torch.nn.Parameter(torch.randn(64))
    with pytest.raises(ValueError, match=r"state_scale must be one of .* for state_dtype=.*got"):
        signopt.Lion([p], lr=1e-3, **kw)


def test_state_scale_e8m0_is_mxfp4():
    p = torch.nn.Parameter(torch.randn(64, 64))
    opt = signopt.Lion([p], lr=1e-3, state_dtype=FMT, state_scale="e8m0")
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[p]["m_scale"].dtype == torch.uint8


def test_bad_blocks_and_state_bytes():
    p = torch.nn.Parameter(torch.randn(64, 64))
    for block in (1, 48, 512):
        with pytest.raises(ValueError, match="state_block must be a power of two"):
            signopt.Lion([p], lr=1e-3, state_dtype=FMT, state_block=block)
    opt = signopt.Lion([p], lr=1e-3, state_dtype=FMT)
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[p]["m"].shape == (2048,) and opt.state[p]["m_scale"].numel() == 128
    assert opt.state_bytes()["per_param"] == pytest.approx(0.5 + 1 / 32)


def _run(backend, fmt=FMT, steps=3, **kw):
    return run_lion_with_nan_grads(backend, fmt, [(37, 29), (1001,), (7,)], steps, **kw)


def test_state_dict_round_trip_and_conversion():
    params, opt = _run("torch")
    assert opt.state[params[1]]["m"].shape == (501,)
    sd = through_checkpoint(opt.state_dict())
    fresh = signopt.Lion(params, lr=1e-2, weight_decay=0.1, state_dtype=FMT, fp8_min_numel=16, seed=9)
    fresh.load_state_dict(sd)
    for p in params:
        for k, v in opt.state[p].items():
            assert torch.equal(v, fresh.state[p][k])
    for dst in ("fp32", "bf16", "fp8_e4m3", "mxfp8_e5m2"):
        new = signopt.Lion(params, lr=1e-2, state_dtype=dst, fp8_min_numel=16)
        new.load_state_dict(opt.state_dict())
        for p in params:
            value = state_layout.read(opt.rule(), opt.state[p], declaration.M, p.shape)
            fmt = state_layout.effective_format(new.rule(), p.numel())
            codes, _ = state_format.encode(value, fmt, new.rule().state_block)
            got = new.state[p]["m"]
            assert torch.equal(got.view(torch.uint8) if got.dtype.itemsize == 1 else got,
                               codes.view(torch.uint8) if codes.dtype.itemsize == 1 else codes)
    back = signopt.Lion(params, lr=1e-2, state_dtype="fp32", fp8_min_numel=16)
    back.load_state_dict(opt.state_dict())
    src = signopt.Lion(params, lr=1e-2, state_dtype="fp32", fp8_min_numel=16)
    src.load_state_dict(back.state_dict())
    into = signopt.Lion(params, lr=1e-2, state_dtype=FMT, fp8_min_numel=16)
    into.load_state_dict(src.state_dict())
    for p in params:  # fp4 -> fp32 -> fp4 is lossless
        assert torch.equal(into.state[p]["m"], opt.state[p]["m"])


def test_kernel_backends():
    """The C++ and Triton kernels either run it bit for bit or refuse it, naming the format."""
    for backend in ("cpp", "triton"):
        try:
            backend_registry.load(backend)
        except backend_registry.BackendUnavailable:
            continue
        p = torch.nn.Parameter(torch.randn(64, 64))
        try:
            signopt.Lion([p], lr=1e-3, state_dtype=FMT, backend=backend)
        except ValueError as exc:
            assert FMT in str(exc)
            continue
        pa, oa = _run("torch")
        pb, ob = _run(backend)
        for a, b in zip(pa, pb):
            assert torch.equal(a, b)
            for k, v in oa.state[a].items():
                assert torch.equal(v, ob.state[b][k]), k


# ---------------------------------------------------------------- state_scale="e4m3" (NVFP4-style)
F32_INV_2688 = torch.tensor(1 / 2688, dtype=torch.float32).item()


def test_nvfp4_scales_codes_by_hand():
    """T = 1: tensor scale fp32(1/(6*448)); block 1 (absmax 1): u = fp32(1/6)/S = 448.000005 ->
    E4M3 448, y = x * 6: 6, 3, -1.8 -> -2 (ulp 0.5: 3.6 -> 4), 0; block 2 (absmax 0.01):
    u = 4.48 -> E4M3 4.5 (ulp 0.5), y = 0.01 / (4.5 S) = 5.97 -> 6, 2.99 -> 3."""
    x = torch.tensor([1.0, 0.5, -0.3, 0.0, 0.01, 0.005, 0.0, 0.0], dtype=torch.float32)
    codes, sb, ts = state_format.encode_state(x, "fp4_e2m1_e4m3", 4)
    assert ts.tolist() == [F32_INV_2688]
    assert sb.dtype == torch.float8_e4m3fn and sb.float().tolist() == [448.0, 4.5]
    assert codes.tolist() == [0x57, 0x0C, 0x57, 0x00]
    dec = state_format.decode(codes, sb, 4, (8,), ts)
    want = torch.tensor([1.0, 0.5, -1 / 3, 0.0, 6 * 4.5 / 2688, 3 * 4.5 / 2688, 0.0, 0.0])
    assert torch.allclose(dec, want, rtol=1e-6, atol=0)


def test_nvfp4_zero_tensor_and_odd_count():
    codes, sb, ts = state_format.encode_state(torch.zeros(5), "fp4_e2m1_e4m3", 2)
    assert ts.tolist() == [2.0 ** -126] and sb.float().tolist() == [2.0 ** -9] * 3
    assert codes.tolist() == [0, 0, 0]
    assert state_format.decode(codes, sb, 2, (5,), ts).tolist() == [0.0] * 5


def test_nvfp4_optimizer_state_and_checkpoints():
    p = torch.nn.Parameter(torch.randn(64, 65))
    opt = signopt.Lion([p], lr=1e-3, state_dtype=FMT, state_scale="e4m3", backend="torch")
    assert opt.rule().state_block == 16
    for _ in range(2):
        p.grad = torch.randn_like(p)
        opt.step()
    st = opt.state[p]
    assert st["m"].shape == (2080,) and st["m_scale"].dtype == torch.float8_e4m3fn and st["m_scale"].numel() == 260
    assert st["m_tensor_scale"].shape == (1,)
    assert opt.state_bytes()["per_param"] == pytest.approx(0.5 + 1 / 16 + 4 / 4160)
    value = state_layout.read(opt.rule(), st, declaration.M, tuple(p.shape))
    sd = through_checkpoint(opt.state_dict())
    same = signopt.Lion([p], lr=1e-3, state_dtype=FMT, state_scale="e4m3", backend="torch")
    same.load_state_dict(sd)
    for k, v in st.items():
        w = same.state[p][k]
        assert torch.equal(v.view(torch.uint8) if v.dtype.itemsize == 1 else v,
                           w.view(torch.uint8) if w.dtype.itemsize == 1 else w), k
    f32 = signopt.Lion([p], lr=1e-3, backend="torch")
    f32.load_state_dict(sd)
    assert torch.equal(f32.state[p]["m"], value)  # decoding is exact
    mx = signopt.Lion([p], lr=1e-3, state_dtype=FMT, backend="torch")
    mx.load_state_dict(sd)  # NVFP4 -> MXFP4
    assert "m_tensor_scale" not in mx.state[p] and mx.state[p]["m_scale"].dtype == torch.uint8
    back = signopt.Lion([p], lr=1e-3, state_dtype=FMT, state_scale="e4m3", backend="torch")
    back.load_state_dict(f32.state_dict())  # fp32 -> NVFP4: the encoding of the value
    codes, sb, ts = state_format.encode_state(value, "fp4_e2m1_e4m3", 16)
    assert torch.equal(back.state[p]["m"], codes) and torch.equal(back.state[p]["m_tensor_scale"], ts)
    bad = opt.state_dict()
    del bad["state"][0]["m_tensor_scale"]
    with pytest.raises(ValueError, match="m_tensor_scale"):
        same.load_state_dict(bad)


def test_nvfp4_auto_backend_on_cpu():
    """``auto`` on CPU takes the cpp backend where it builds (it runs NVFP4, below), else the torch
    one (Triton runs it too: tests/test_parity_triton.py)."""
    p = torch.nn.Parameter(torch.randn(64, 64))
    opt = signopt.Lion([p], lr=1e-3, state_dtype=FMT, state_scale="e4m3")
    try:
        backend_registry.load("cpp")
        assert opt.backends == ["cpp"]
    except backend_registry.BackendUnavailable:
        assert opt.backends == ["torch"]


def _nvfp4_run(backend, shapes, steps=4, **kw):
    """Lion over ``shapes`` with NVFP4 state: non-default betas, weight decay 0.1, NaN gradients in
    step 1 (run_lion_with_nan_grads)."""
    return run_lion_with_nan_grads(backend, FMT, shapes, steps, state_scale="e4m3", betas=(0.8, 0.95), **kw)


@pytest.mark.parametrize("kw", [{}, {"state_rounding": "stochastic"}, {"state_block": 2},
                                {"state_block": 64, "state_rounding": "stochastic"}])
def test_nvfp4_cpp_matches_the_reference_bit_for_bit(kw):
    """The cpp CPU kernels store NVFP4 state (codes, E4M3 block scales, the fp32 tensor scale) with
    the bits of ``state_format.nvfp4_encode``: odd sizes, tensors not a multiple of the block, one
    below ``fp8_min_numel`` (fp32 state), NaN gradients, nearest and stochastic state rounding."""
    backend_or_skip("cpp")
    shapes = [(37, 29), (1001,), (7,), (3, 5, 11)]
    pa, oa = _nvfp4_run("torch", shapes, **kw)
    pb, ob = _nvfp4_run("cpp", shapes, **kw)
    assert ob.last_step_backends == ["cpp"]
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
        assert set(oa.state[a]) == set(ob.state[b])
        for k, v in oa.state[a].items():
            w = ob.state[b][k]
            assert v.dtype == w.dtype, k
            assert torch.equal(v.view(torch.uint8) if v.dtype.itemsize == 1 else v,
                               w.view(torch.uint8) if w.dtype.itemsize == 1 else w), k
    assert "m_tensor_scale" in ob.state[pb[0]] and "m_tensor_scale" not in ob.state[pb[2]]


def test_nvfp4_cpp_encode_op_is_the_reference_codec():
    """signopt::encode (the kernels' load/store layer) of NVFP4: the codes, E4M3 scales and decoded
    values of ``state_format.nvfp4_encode`` (tensor scale from the finite absmax), NaN/inf included."""
    backend_or_skip("cpp")
    gen = torch.Generator().manual_seed(4)
    fid = declaration.FORMATS["fp4_e2m1_e4m3"].id
    cases = [torch.randn(101, generator=gen) * 10.0 ** torch.randint(-30, 30, (101,), generator=gen),
             torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 3e-40, 2.0 ** -140, 5.0]),
             torch.zeros(6), torch.full((8,), 1e38), torch.tensor([2.0 ** -126, 2.0 ** -149, 0.0, 1e-45])]
    for x in cases:
        for block in (2, 4, 16):
            words = torch.randint(0, 2 ** 32, (x.numel(),), generator=gen, dtype=torch.int64)
            for w in (None, words):
                codes, sb, dec = torch.ops.signopt.encode(x, fid, block, w)
                ref_codes, ref_sb, ref_ts = state_format.encode_state(x, "fp4_e2m1_e4m3", block, w)
                assert torch.equal(codes, ref_codes) and sb.dtype == torch.float8_e4m3fn
                assert torch.equal(sb.view(torch.uint8), ref_sb.view(torch.uint8))
                want = state_format.decode(ref_codes, ref_sb, block, (x.numel(),), ref_ts)
                assert torch.equal(dec.view(torch.int32), want.view(torch.int32))


class _CudaParam:
    """What CppBackend.unsupported reads of a parameter, for a CUDA one on a machine without a GPU."""
    device = torch.device("cuda")
    dtype = torch.float32
    grad = None

    def is_complex(self):
        return False

    def is_contiguous(self):
        return True


@pytest.mark.parametrize("state_scale", [None, "e4m3"])
def test_cpp_backend_takes_fp4_state_on_cuda(state_scale):
    """The cpp backend's CUDA kernels run both packed 4-bit formats, MXFP4 and NVFP4-style
    (tests/test_cpp_cuda.py checks their bits against the reference on a GPU): no refusal."""
    from signopt.backends.cpp_backend import CppBackend

    rule = signopt.Lion([torch.nn.Parameter(torch.randn(8))], lr=1e-3, state_dtype=FMT, state_scale=state_scale,
                        backend="torch").rule()
    assert declaration.FORMATS[rule.state_dtype].packed
    assert CppBackend(has_cuda=True).unsupported(rule, [_CudaParam()]) is None
    assert "built without CUDA kernels" in CppBackend(has_cuda=False).unsupported(rule, [_CudaParam()])

"""MX (OCP Microscaling v1.0) optimizer state: ``mxfp8_e4m3`` and ``mxfp8_e5m2``.

FP8 codes with one E8M0 (power-of-two) scale per block. The expected scale bytes, codes and
decoded values below are worked out by hand from the MX rule (shared exponent
``floor(log2(absmax)) - emax``, emax 8 for E4M3 and 15 for E5M2, clamped at E8M0's 2**-127;
elements saturate at the format's largest finite value), not computed with the library.
"""
from __future__ import annotations

import math

import pytest
import torch

import signopt
from optim_infos import backend_or_skip, run_lion_with_nan_grads, through_checkpoint
from signopt import backends as backend_registry
from signopt import declaration, state_format, state_layout

MX = ["mxfp8_e4m3", "mxfp8_e5m2"]
ID = {n: declaration.FORMATS[n].id for n in declaration.FORMATS}


def _encoders():
    """(name, encode(x, fmt, block, words) -> (codes, scale bytes, decoded)) of every backend
    that has a standalone codec here: the torch reference, and the C++ one when it builds."""
    def torch_enc(x, fmt, block, words=None):
        codes, scales = state_format.encode(x, fmt, block, words)
        return codes, scales, state_format.fp8_decode(codes, scales, block)

    out = [("torch", torch_enc)]
    try:
        backend_registry.load("cpp")
    except backend_registry.BackendUnavailable:
        return out

    def cpp_enc(x, fmt, block, words=None):
        return torch.ops.signopt.encode(x, ID[fmt], block, words)

    return out + [("cpp", cpp_enc)]


ENCODERS = _encoders()


# ---------------------------------------------------------------- declaration and options
def test_mx_formats_are_declared_with_e8m0_scales():
    for name, emax in (("mxfp8_e4m3", 8), ("mxfp8_e5m2", 15)):
        f = declaration.FORMATS[name]
        assert f.block_scaled and f.scale == "e8m0" and f.default_block == 32 and f.emax == emax
        assert declaration.scale_dtype(name) == torch.uint8
    for name in ("fp8_e4m3", "fp8_e5m2"):
        assert declaration.FORMATS[name].scale == "fp32" and declaration.FORMATS[name].default_block == 256


@pytest.mark.parametrize("block", [48, 3, 512, 0, 2.0])
def test_bad_mx_block_raises_naming_the_option_before_anything_is_touched(block):
    p = torch.nn.Parameter(torch.randn(64))
    before = p.detach().clone()
    with pytest.raises(ValueError, match=r"state_block must be a (power of two in \(1, 2, 4, .*256\)|positive)"):
        signopt.Lion([p], lr=1e-3, state_dtype="mxfp8_e4m3", state_block=block)
    assert torch.equal(p, before)
    # the same block is fine for the fp32-scaled FP8 format (any positive int)
    if isinstance(block, int) and block > 0:
        signopt.Lion([p], lr=1e-3, state_dtype="fp8_e4m3", state_block=block)


def test_bad_mx_block_in_add_param_group_and_load_leaves_the_optimizer_as_it_was():
    p, q = torch.nn.Parameter(torch.randn(64)), torch.nn.Parameter(torch.randn(64))
    opt = signopt.Lion([p], lr=1e-3, state_dtype="mxfp8_e4m3")
    with pytest.raises(ValueError, match="state_block must be a power of two"):
        opt.add_param_group({"params": [q], "state_block": 96})
    assert len(opt.param_groups) == 1


def test_default_block_is_the_formats():
    p = torch.nn.Parameter(torch.randn(100, 50))
    for fmt, block in (("mxfp8_e4m3", 32), ("mxfp8_e5m2", 32), ("fp8_e4m3", 256)):
        opt = signopt.Lion([p], lr=1e-3, state_dtype=fmt)
        assert opt.rule().state_block == block
        p.grad = torch.randn_like(p)
        opt.step()
        scales = opt.state[p]["m_scale"]
        assert scales.numel() == -(-5000 // block)
        assert scales.dtype == (torch.uint8 if fmt.startswith("mx") else torch.float32)


# ---------------------------------------------------------------- the scale rule, by hand
# absmax -> (E4M3 scale byte, E5M2 scale byte): biased 127 + floor(log2(absmax)) - emax, >= 0
SCALE_BYTES = [
    (1.0, 119, 112),            # 2**0: 127 - 8, 127 - 15
    (448.0, 127, 120),          # 1.75 * 2**8
    (0.75, 118, 111),           # 1.5 * 2**-1
    (2.0 ** 20, 139, 132),      # a power of two exactly
    (1.9990234375, 119, 112),   # just below 2: still exponent 0
    (3.0e38, 246, 239),         # exponent 127 (fp32's largest binade)
    (2.0 ** -120, 0, 0),        # 7 - 8 < 0: clamped to E8M0's 2**-127
    (1.5 * 2.0 ** -126, 0, 0),  # smallest normal binade
    (2.0 ** -140, 0, 0),        # fp32 subnormal
    (0.0, 0, 0),                # all zeros
]


@pytest.mark.parametrize("backend,enc", ENCODERS, ids=[n for n, _ in ENCODERS])
@pytest.mark.parametrize("absmax,b43,b52", SCALE_BYTES)
def test_scale_byte_by_hand(backend, enc, absmax, b43, b52):
    x = torch.tensor([absmax, -absmax / 2, 0.0, absmax / 3], dtype=torch.float32)
    for fmt, byte in (("mxfp8_e4m3", b43), ("mxfp8_e5m2", b52)):
        codes, scales, _ = enc(x, fmt, 4)
        assert scales.dtype == torch.uint8 and scales.tolist() == [byte], (fmt, absmax)
        # the sign of the absmax element does not matter
        _, neg, _ = enc(-x, fmt, 4)
        assert neg.tolist() == [byte]


def test_e8m0_values():
    v = state_format.e8m0_value(torch.tensor([0, 1, 119, 127, 128, 254, 255], dtype=torch.uint8))
    assert v[:6].tolist() == [2.0 ** -127, 2.0 ** -126, 2.0 ** -8, 1.0, 2.0, 2.0 ** 127]
    assert math.isnan(v[6].item())


# values -> decoded values (block of 4 = one MX block)
DECODED = {
    "mxfp8_e4m3": [
        # scale 2**-8: 256, 128, -76.8 -> -80 (ulp 8 in [64, 128)), 0
        ([1.0, 0.5, -0.3, 0.0], [1.0, 0.5, -0.3125, 0.0]),
        # saturation: 1.9 * 256 = 486.4 > 448 -> 448 * 2**-8 = 1.75
        ([1.9, 1.0, -1.9, 0.25], [1.75, 1.0, -1.75, 0.25]),
        # subnormal codes (x * 2**8 below 2**-6): 2**-17 -> 2**-9 (the smallest code);
        # 2**-18 -> 2**-10: half the smallest, ties to even -> 0; 3 * 2**-18 -> 1.5 ulp -> 2 ulp
        ([1.0, 2.0 ** -17, 2.0 ** -18, 3 * 2.0 ** -18], [1.0, 2.0 ** -17, 0.0, 2.0 ** -16]),
        # non-finite: out of the absmax; NaN stays NaN, +-inf saturate to +-448 * 2**-8
        ([1.0, float("nan"), float("inf"), -float("inf")], [1.0, float("nan"), 1.75, -1.75]),
        # an fp32-subnormal block: scale 2**-127, 2**-140 * 2**127 = 2**-13 < 2**-10 -> 0
        ([2.0 ** -140, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]),
    ],
    "mxfp8_e5m2": [
        # scale 2**-15: -0.3 * 32768 = -9830.4 -> -10240 (ulp 2048) -> -0.3125
        ([1.0, 0.5, -0.3, 0.0], [1.0, 0.5, -0.3125, 0.0]),
        # saturation: 1.9 * 32768 > 57344 -> 1.75
        ([1.9, 1.0, -1.9, 0.25], [1.75, 1.0, -1.75, 0.25]),
        ([1.0, float("nan"), float("inf"), -float("inf")], [1.0, float("nan"), 1.75, -1.75]),
        # scale 2**-127: 2**-140 * 2**127 = 2**-13, an E5M2 subnormal: exact (decodes to an fp32
        # subnormal)
        ([2.0 ** -140, 0.0, -(2.0 ** -141), 0.0], [2.0 ** -140, 0.0, -(2.0 ** -141), 0.0]),
    ],
}


@pytest.mark.parametrize("backend,enc", ENCODERS, ids=[n for n, _ in ENCODERS])
@pytest.mark.parametrize("fmt", MX)
def test_decoded_values_by_hand(backend, enc, fmt):
    for values, expected in DECODED[fmt]:
        _, _, dec = enc(torch.tensor(values, dtype=torch.float32), fmt, 4)
        exp = torch.tensor(expected, dtype=torch.float32)
        assert torch.equal(dec.isnan(), exp.isnan()), (values, dec)
        assert torch.equal(torch.nan_to_num(dec), torch.nan_to_num(exp)), (fmt, values, dec.tolist())


@pytest.mark.parametrize("fmt", MX)
def test_power_of_two_absmax_is_exact_and_the_top_of_the_grid(fmt):
    """absmax = 2**k: scale 2**(k - emax), the absmax itself codes to 2**emax (exact, not
    saturated), and every representable fraction of it round-trips."""
    emax = declaration.FORMATS[fmt].emax
    for k in (-30, -3, 0, 5, 60):
        x = torch.tensor([2.0 ** k, 2.0 ** (k - 1), -(2.0 ** (k - 2)), 0.75 * 2.0 ** k], dtype=torch.float32)
        codes, scales = state_format.encode(x, fmt, 4)
        assert scales.tolist() == [127 + k - emax]
        assert codes.float()[0].item() == 2.0 ** emax
        assert torch.equal(state_format.fp8_decode(codes, scales, 4), x)


@pytest.mark.parametrize("fmt", MX)
def test_partial_last_block_and_block_sizes(fmt):
    """A tensor that is not a multiple of the block: the last block's absmax is its own."""
    x = torch.cat([torch.full((32,), 1.0), torch.full((5,), 2.0 ** -10)])
    codes, scales = state_format.encode(x, fmt, 32)
    emax = declaration.FORMATS[fmt].emax
    assert scales.tolist() == [127 - emax, 127 - 10 - emax]
    assert torch.equal(state_format.fp8_decode(codes, scales, 32), x)
    for block in (1, 2, 8, 64, 256):
        codes, scales = state_format.encode(x, fmt, block)
        assert scales.numel() == -(-37 // block)
        assert torch.equal(state_format.fp8_decode(codes, scales, block), x)


@pytest.mark.parametrize("fmt", MX)
def test_stochastic_rounding_is_unbiased(fmt):
    """E[decode(encode_sr(x))] = x for values between grid points (the block scale is fixed by
    the absmax element, which is on the grid)."""
    n = 20000
    base = torch.tensor([1.0, 0.3, -0.0123, 0.77], dtype=torch.float32)
    x = base.repeat(n)
    words = torch.randint(0, 2 ** 32, (x.numel(),), generator=torch.Generator().manual_seed(3), dtype=torch.int64)
    codes, scales = state_format.encode(x, fmt, 4, words)
    dec = state_format.fp8_decode(codes, scales, 4).reshape(n, 4)
    mean = dec.double().mean(dim=0)
    nearest = state_format.fp8_decode(*state_format.encode(base, fmt, 4), 4)
    assert not torch.equal(nearest, base)  # some values are off the grid
    m = declaration.FORMATS[fmt].mantissa_bits
    ulp = torch.exp2(torch.floor(torch.log2(base.abs().double())) - m)
    assert torch.all((mean - base.double()).abs() <= 4 * ulp / math.sqrt(n) * 3)
    # each draw is one of the two neighbours
    lo_hi = dec.double() - base.double()
    assert torch.all(lo_hi.abs() <= ulp)


@pytest.mark.parametrize("fmt", MX)
@pytest.mark.parametrize("block", [1, 4, 32, 256])
def test_cpp_codec_matches_the_reference(fmt, block):
    backend_or_skip("cpp")
    gen = torch.Generator().manual_seed(block)
    x = torch.randn(1031, generator=gen) * torch.exp2(torch.randint(-40, 40, (1031,), generator=gen).float())
    x[::97] = float("nan")
    x[5::101] = float("inf")
    x[7::103] = -float("inf")
    x[200:200 + 2 * block] = 0.0
    x[600:610] = 2.0 ** -140
    words = torch.randint(0, 2 ** 32, (x.numel(),), generator=gen, dtype=torch.int64)
    for w in (None, words):
        codes, scales = state_format.encode(x, fmt, block, w)
        ccodes, cscales, cdec = torch.ops.signopt.encode(x, ID[fmt], block, w)
        assert cscales.dtype == torch.uint8
        assert torch.equal(ccodes.view(torch.uint8), codes.view(torch.uint8))
        assert torch.equal(cscales, scales)
        dec = state_format.fp8_decode(codes, scales, block)
        assert torch.equal(cdec.isnan(), dec.isnan())
        assert torch.equal(torch.nan_to_num(cdec).view(torch.int32), torch.nan_to_num(dec).view(torch.int32))


# ---------------------------------------------------------------- optimizer level
def _run(backend, fmt, steps=3, **kw):
    return run_lion_with_nan_grads(backend, fmt, [(37, 29), (1000,), (7,)], steps, **kw)


@pytest.mark.parametrize("fmt", MX)
@pytest.mark.parametrize("kw", [{}, {"state_block": 8, "state_rounding": "stochastic"}, {"state_block": 1}])
def test_cpp_optimizer_is_bit_identical_to_the_reference(fmt, kw):
    backend_or_skip("cpp")
    pa, oa = _run("torch", fmt, **kw)
    pb, ob = _run("cpp", fmt, **kw)
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
        for k, v in oa.state[a].items():
            w = ob.state[b][k]
            assert v.dtype == w.dtype
            assert torch.equal(v.view(torch.uint8) if v.dtype.itemsize == 1 else v,
                               w.view(torch.uint8) if w.dtype.itemsize == 1 else w), k


@pytest.mark.parametrize("fmt", MX)
def test_state_bytes(fmt):
    params = [torch.nn.Parameter(torch.randn(64, 1024)) for _ in range(2)]
    opt = signopt.Lion(params, lr=1e-4, state_dtype=fmt, backend="torch")
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state_bytes()["per_param"] == pytest.approx(1 + 1 / 32)
    opt2 = signopt.SignConversion(params, lr=1e-4, base="adamw", state_dtype=fmt, state_block=256,
                                  backend="torch")
    for p in params:
        p.grad = torch.randn_like(p)
    opt2.step()
    # m, v and the element envelope G: three MX slots, plus the step counters
    assert opt2.state_bytes()["total"] == 2 * (3 * (65536 + 256) + 8)


# ---------------------------------------------------------------- state dicts
@pytest.mark.parametrize("fmt", MX)
def test_state_dict_round_trip_with_weights_only(fmt):
    params, opt = _run("torch", fmt)
    sd = through_checkpoint(opt.state_dict())
    fresh = signopt.Lion(params, lr=1e-2, weight_decay=0.1, state_dtype=fmt, fp8_min_numel=16, seed=9)
    fresh.load_state_dict(sd)
    for p in params:
        for k, v in opt.state[p].items():
            w = fresh.state[p][k]
            assert v.dtype == w.dtype and torch.equal(v.view(torch.uint8) if v.dtype.itemsize == 1 else v,
                                                      w.view(torch.uint8) if w.dtype.itemsize == 1 else w)


PAIRS = [(a, b) for a in ("fp32", "bf16", "fp8_e4m3", "fp8_e5m2", *MX) for b in ("fp32", "bf16", "fp8_e4m3", "fp8_e5m2", *MX)
         if a != b and (a in MX or b in MX)]


@pytest.mark.parametrize("src,dst", PAIRS)
def test_state_dict_converts_between_formats(src, dst):
    """Loading converts the saved state into the loading optimizer's format: the stored tensors
    are exactly those of encoding the saved state's fp32 value in the new format."""
    params, opt = _run("torch", src)
    sd = opt.state_dict()
    new = signopt.Lion(params, lr=1e-2, weight_decay=0.1, state_dtype=dst, fp8_min_numel=16, seed=9)
    new.load_state_dict(sd)
    rule_src, rule_dst = opt.rule(), new.rule()
    for p in params:
        value = state_layout.read(rule_src, opt.state[p], declaration.M)
        fmt = state_layout.effective_format(rule_dst, p.numel())
        codes, scales = state_format.encode(value, fmt, rule_dst.state_block)
        m = new.state[p]["m"]
        assert m.dtype == codes.dtype
        assert torch.equal(m.view(torch.uint8) if m.dtype.itemsize == 1 else m,
                           codes.view(torch.uint8) if codes.dtype.itemsize == 1 else codes)
        if scales is not None:
            assert torch.equal(new.state[p]["m_scale"], scales)
        else:
            assert "m_scale" not in new.state[p]
        if dst == "fp32":  # decoding is exact
            assert torch.equal(new.state[p]["m"], value)


def test_mx_block_conversion():
    params, opt = _run("torch", "mxfp8_e4m3", state_block=8)
    new = signopt.Lion(params, lr=1e-2, state_dtype="mxfp8_e4m3", fp8_min_numel=16, state_block=128)
    new.load_state_dict(opt.state_dict())
    assert new.state[params[1]]["m_scale"].numel() == -(-1000 // 128)
    # a state dict whose group left state_block at None: the saved format's default block
    opt2 = signopt.Lion(params, lr=1e-2, state_dtype="mxfp8_e5m2", fp8_min_numel=16)
    for p in params:
        p.grad = torch.randn_like(p)
    opt2.step()
    sd = opt2.state_dict()
    assert sd["param_groups"][0]["state_block"] is None
    back = signopt.Lion(params, lr=1e-2, state_dtype="fp32", fp8_min_numel=16)
    back.load_state_dict(sd)
    assert torch.equal(back.state[params[1]]["m"], state_layout.read(opt2.rule(), opt2.state[params[1]], declaration.M))


def test_checkpoint_with_wrong_scales_is_refused():
    params, opt = _run("torch", "mxfp8_e4m3")
    sd = opt.state_dict()
    sd["state"][1]["m_scale"] = sd["state"][1]["m_scale"][:-1]
    fresh = signopt.Lion(params, lr=1e-2, state_dtype="mxfp8_e4m3", fp8_min_numel=16)
    with pytest.raises(ValueError, match="m_scale"):
        fresh.load_state_dict(sd)

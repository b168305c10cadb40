"""The Triton backend's numerics helpers on edge values, and its plumbing.

Helpers (``signopt.kernels.numerics`` / ``state_io``) run in a one-program test kernel under
the interpreter and are compared bit for bit with :mod:`signopt.casting` /
:mod:`signopt.state_format` on ties, subnormals, the largest finite values, inf and NaN.
Plumbing: one update launch for any number of tensors, a prepared plan that keeps its tables
between steps (and steps non-contiguous parameters through refreshed work copies), ids,
random-bit purposes and scalar-table order taken from ``signopt.declaration``, no triton import
from ``import signopt``, clear availability errors. Random bits v2: the kernels' words at any
indices and in rows of any alignment equal ``signopt.philox.element_word``.
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


def nvfp4_inputs(case: str) -> torch.Tensor:
    """Flat fp32 tensors for the NVFP4 codec: ``edge`` (blocks of 16 holding the tensor's absmax,
    so a block scale of 448; all zeros and far below the absmax, so the 2**-9 floor; E4M3-subnormal
    block scales; NaN and +-inf; E2M1 grid points and midpoints of the block's own scale; wide random
    magnitudes; 1029 elements, an odd count and no multiple of any block), ``zero`` and ``tiny`` (a tensor scale clamped at 2**-126)."""
    if case == "zero":
        return torch.zeros(37)
    if case == "tiny":
        return torch.tensor([1e-36, -3e-37, 2.0 ** -140, 0.0, 5e-38, -1e-36, 2.0 ** -149], dtype=torch.float32)
    t = 96.0
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -2.5, -5.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    blocks = [
        torch.full((16,), t) * torch.linspace(-1, 1, 16),
        torch.zeros(16),
        torch.full((16,), 1e-9),                                        # u rounds below 2**-9
        torch.linspace(0, 1, 16) * t * 2.0 ** -14,                      # E4M3-subnormal block scale
        torch.tensor([1.0, float("nan"), float("inf"), -float("inf")] + [0.5] * 12),
        ties * 0.125,                                                   # E2M1 points and midpoints, absmax -> 6
    ]
    gen = torch.Generator().manual_seed(3)
    rnd = torch.randn(1029 - 16 * len(blocks), generator=gen)
    rnd = rnd * torch.exp2(torch.randint(-20, 6, rnd.shape, generator=gen).float())
    return torch.cat(blocks + [rnd]).to(torch.float32)


@pytest.mark.parametrize("case", ["edge", "zero", "tiny"])
@pytest.mark.parametrize("block", [2, 16, 32])
@pytest.mark.parametrize("stochastic", [False, True])
def test_nvfp4_codec_bits(kernels, case, block, stochastic):
    """The Triton NVFP4 store (tensor scale, E4M3 block scales, packed E2M1 codes) and load equal
    ``state_format.nvfp4_encode`` / ``nvfp4_decode`` bit for bit."""
    from signopt import state_format

    x = nvfp4_inputs(case)
    w = words_for(x.numel())
    codes, sb, ts, dec = kernels.nvfp4(x, w, block, stochastic)
    want_codes, want_sb, want_ts = state_format.nvfp4_encode(x, state_format.FP4["fp4_e2m1_e4m3"], block,
                                                             w if stochastic else None)
    assert torch.equal(ts, want_ts)
    assert torch.equal(sb.view(torch.uint8), want_sb.view(torch.uint8))
    assert torch.equal(codes, want_codes)
    assert torch.equal(dec, state_format.nvfp4_decode(want_codes, want_sb, want_ts, block, x.numel()))


def _triton_seed(key):
    from signopt import philox

    seed = philox.triton_seed(key)
    return seed - (1 << 64) if seed >= 1 << 63 else seed  # a signed int64 kernel argument


def test_element_word_follows_the_reference(kernels):
    """Random bits v2 at arbitrary indices: word ``i & 3`` of the call on ``i >> 2``, for every
    declared purpose, across multiples of 2**32 in ``j`` and in ``i``."""
    from signopt import declaration, philox

    key = (0x9E3779B9, 0xDEADBEEF)
    idx = torch.tensor([0, 1, 2, 3, 4, 255, 1000, 2**32 - 1, 2**32 + 5, 3 * 2**32 + 7,
                        2**34 - 1, 2**34, 2**34 + 3, 5 * 2**34 + 6, 2**62 + 1], dtype=torch.int64)
    for purpose, p in declaration.RANDOM_PURPOSES.items():
        got = kernels.element_word(_triton_seed(key), idx, p)
        assert torch.equal(got, philox.element_word(key, idx, p)), purpose


@pytest.mark.parametrize("cols", [1, 2, 4, 8, 16, 64])
def test_row_words_follow_the_reference(kernels, cols):
    """The kernels' one draw: rows of consecutive elements starting at any residue mod 4
    (aligned tiles, misaligned ones, and a tile mixing both), runs crossing a multiple of 2**32
    in ``j`` (index 2**34) and in ``i``, every purpose."""
    from signopt import declaration, philox

    key = (0x0BADF00D, 0x12345678)
    tiles = [[0, 4, 64, 2**34 - 4 * cols],  # every row aligned: one call per four elements
             [1, 2, 3, 7], [0, 5, 2**34 - 2, 2**32 - 3],  # misaligned rows, alone or beside aligned ones
             [2**34 - cols // 2 - 1, 2**61 - 4 * cols, 2**32 + 1, 6]]
    for bases in tiles:
        b = torch.tensor(bases, dtype=torch.int64)
        for purpose, p in declaration.RANDOM_PURPOSES.items():
            got = kernels.row_words(_triton_seed(key), b, p, cols)
            want = torch.stack([philox.element_word(key, x + torch.arange(cols), p) for x in b])
            assert torch.equal(got, want), (bases, purpose)


def _constants(module, prefix: str) -> dict[str, int]:
    return {name[len(prefix):].lower(): getattr(module, name).value
            for name in dir(module) if name.startswith(prefix)}


def test_kernel_ids_follow_the_declaration(kernels):
    """Every id the kernels compare against is the declared one, and every declared choice has
    one: a new or renumbered family, kappa, base, envelope, format or random-bit purpose in
    ``signopt.declaration`` cannot leave the Triton kernels behind."""
    from signopt import declaration
    from signopt.kernels import launch, numerics, rules

    for prefix, declared, host in (("FAMILY_", declaration.FAMILIES, launch.FAMILIES),
                                   ("KAPPA_", declaration.KAPPAS, launch.KAPPAS),
                                   ("BASE_", declaration.BASES, launch.BASES),
                                   ("ENVELOPE_", declaration.ENVELOPES, launch.ENVELOPES)):
        assert _constants(rules, prefix) == declared
        assert host == declared
    kinds = {name.replace("fp8_", ""): f.id for name, f in declaration.FORMATS.items()}
    assert _constants(numerics, "KIND_") == kinds
    assert launch.PARAM_KINDS == {f.dtype: f.id for f in declaration.FORMATS.values() if f.param}
    assert launch.STATE_KINDS == {n: f.id for n, f in declaration.FORMATS.items() if f.state}
    for name, prefix in (("fp16", "FP16_"), ("fp8_e4m3", "E4M3_"), ("fp8_e5m2", "E5M2_")):
        f, got = declaration.FORMATS[name], _constants(numerics, prefix)
        assert (got["m"], got["emin"], got["max"]) == (f.mantissa_bits, f.emin, f.max_finite)
        if "bias" in got:
            assert got["bias"] == 1 - f.emin
        if "emax" in got:
            assert got["emax"] == f.emax
    assert _constants(numerics, "PURPOSE_") == declaration.RANDOM_PURPOSES


def test_scalar_tables_follow_the_declaration(kernels):
    """The group scalar tables hold ``declaration.SCALARS`` in their declared order (fp32 ones,
    then the format constants; fp64 ones apart), every ``S_``/``D_`` column the kernels read is
    its name's position, and the host fills each column with the scalar of that name."""
    from signopt import declaration
    from signopt.kernels import launch, layout
    from signopt.scalars import GroupScalars, f32

    fp32 = [s.name for s in declaration.SCALARS if s.ctype == "float"]
    fp64 = [s.name for s in declaration.SCALARS if s.ctype == "double"]
    assert fp32 + fp64 != [] and len(fp32) + len(fp64) == len(declaration.SCALARS)
    assert layout.SCALARS32 == tuple(fp32) + layout.FORMAT_SCALARS
    assert layout.SCALARS64 == tuple(fp64)
    columns32, columns64 = _constants(layout, "S_"), _constants(layout, "D_")
    assert columns32 and columns64
    assert all(layout.SCALARS32.index(n) == i for n, i in columns32.items())
    assert all(layout.SCALARS64.index(n) == i for n, i in columns64.items())
    assert (layout.N_SCALARS.value, layout.N_SCALARS64.value) == (len(layout.SCALARS32), len(fp64))

    values = {s.name: (i + 1) / 8 for i, s in enumerate(declaration.SCALARS)}
    cpu = torch.device("cpu")
    for lr in (values["lr"], torch.tensor(values["lr"])):
        sc = GroupScalars(**dict(values, lr=lr), inv_scale=None, found_inf=None)
        table = launch._scalar_table(sc, "fp8_e4m3", cpu)
        assert table.tolist() == [values[n] for n in fp32] + [f32(1 / declaration.FORMATS["fp8_e4m3"].max_finite)]
        assert launch._scalar_table64(sc, cpu).tolist() == [values[n] for n in fp64]


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


@pytest.fixture
def table_builds(monkeypatch):
    """Counts the plans ``launch.prepare`` makes and the tables it builds (and uploads)."""
    from signopt.kernels import launch

    seen = {"plans": [], "tables": []}
    table, prepare = launch.DeviceTableCache.table, launch.prepare

    def counting_table(self, device, key, build):
        def counted():
            seen["tables"].append(key)
            return build()
        return table(self, device, key, counted)

    def counting_prepare(rule, slots):
        seen["plans"].append(prepare(rule, slots))
        return seen["plans"][-1]

    monkeypatch.setattr(launch.DeviceTableCache, "table", counting_table)
    monkeypatch.setattr(launch, "prepare", counting_prepare)
    return seen


@pytest.mark.parametrize("make,per_step", [
    (lambda ps, b: signopt.Lion(ps, lr=0.1, weight_decay=0.1, cautious=True, backend=b), 0),
    (lambda ps, b: signopt.LionKappa(ps, kappa="row_l2", lr=0.1, backend=b), 0),
    # keys (tensor table) and bias corrections (tensor scalar table) change every step
    (lambda ps, b: signopt.SignConversion(ps, base="adamw", envelope="row", lr=0.1, seed=3,
                                          backend=b), 2),
], ids=["lion-cautious", "kappa-row_l2", "conv-adamw-row"])
def test_prepared_step_keeps_its_tables(kernels, table_builds, make, per_step):
    """One plan for every step; a step with the same gradient tensors builds no table beyond
    its new keys and bias corrections, one with new gradient tensors only the tensor table."""
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen) for s in [(5, 7), (300,), (3,)]]
    ref = [p.clone() for p in ps]
    opt, ropt = make(ps, "triton"), make(ref, "torch")
    for p, q in zip(ps, ref):
        p.grad = torch.randn(p.shape, generator=gen)
        q.grad = p.grad.clone()
    opt.step()
    ropt.step()
    for step in range(3):
        old = [p.grad for p in ps]
        if step < 2:
            for p in ps:
                p.grad.copy_(torch.randn(p.shape, generator=gen))
        else:
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen)
        for p, q in zip(ps, ref):
            q.grad = p.grad.clone()
        table_builds["tables"].clear()
        opt.step()
        ropt.step()
        new_grads = step == 2  # (a rule with new keys every step rebuilds its tensor table anyway)
        want = per_step if per_step else int(new_grads)
        assert len(table_builds["tables"]) == want, table_builds["tables"]
        del old
    assert len(table_builds["plans"]) == 1
    for p, q in zip(ps, ref):
        assert torch.equal(p, q)
        assert all(torch.equal(opt.state[p][k], ropt.state[q][k]) for k in ropt.state[q])


def test_noncontiguous_param_over_steps(kernels, table_builds):
    """A kept plan steps a non-contiguous parameter through a work copy that each step
    refreshes (the parameter changes between steps) and writes back."""
    p = torch.randn(6, 8).t()
    q = p.detach().clone()
    opt = signopt.Lion([p], lr=0.1, weight_decay=0.1, backend="triton")
    ropt = signopt.Lion([q], lr=0.1, weight_decay=0.1, backend="torch")
    for _ in range(3):
        p.grad = torch.randn(8, 6)
        q.grad = p.grad.clone()
        opt.step()
        ropt.step()
        assert torch.equal(p, q) and torch.equal(opt.state[p]["m"], ropt.state[q]["m"])
        with torch.no_grad():
            p.mul_(0.5)
            q.mul_(0.5)
    assert len(table_builds["plans"]) == 1


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

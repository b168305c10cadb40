"""CUDA kernels of the cpp backend (need a GPU; skipped elsewhere, see conftest.py).

CPU-vs-GPU bit identity for the exact rules, packed 4-bit state (MXFP4 and NVFP4-style) against the
torch reference bit for bit, one kernel launch per pass for a whole param group, no host synchronisation inside
step, and CUDA-graph capture with a tensor lr.
"""
from __future__ import annotations

import pytest
import torch

import signopt
from signopt import backends as backend_registry
from signopt import state_format

import test_cpp_core as core
import test_parity as tp

pytestmark = pytest.mark.cuda


def cpp_cuda_or_skip():
    try:
        backend = backend_registry.load("cpp")
    except backend_registry.BackendUnavailable as exc:
        pytest.skip(f"cpp backend unavailable: {exc}")
    if not backend.has_cuda:
        pytest.skip("the signopt extension was built without CUDA kernels")


EXACT_RULES = [name for name, (_, _, tol) in tp.RULES.items() if tol == tp.EXACT]
OPTION_SETS = [
    dict(weight_decay=0.1, wd_mode="decoupled", maximize=False, cautious=False, state_dtype="fp32",
         state_block=256, fp8_min_numel=0, state_rounding="nearest", param_rounding="nearest"),
    dict(weight_decay=0.1, wd_mode="l2", maximize=True, cautious=True, state_dtype="bf16",
         state_block=256, fp8_min_numel=0, state_rounding="stochastic", param_rounding="stochastic"),
    dict(weight_decay=0.0, wd_mode="independent", maximize=False, cautious=True, state_dtype="fp8_e4m3",
         state_block=32, fp8_min_numel=0, state_rounding="stochastic", param_rounding="nearest"),
    dict(weight_decay=0.1, wd_mode="decoupled", maximize=False, cautious=False, state_dtype="fp8_e5m2",
         state_block=3, fp8_min_numel=100, state_rounding="nearest", param_rounding="stochastic"),
    dict(weight_decay=0.1, wd_mode="decoupled", maximize=False, cautious=False, state_dtype="fp8_e4m3",
         state_block=256, fp8_min_numel=0, state_rounding="nearest", param_rounding="nearest"),
    dict(weight_decay=0.0, wd_mode="decoupled", maximize=False, cautious=False, state_dtype="fp8_e4m3",
         state_block=512, fp8_min_numel=0, state_rounding="stochastic", param_rounding="nearest"),
]
# FP8 blocks of 8..256 (powers of two) are encoded from registers (32, 256 above), others
# through shared memory (3, 512).
SHAPES = [(7, 31), (1031,), (), (3, 4099), (0, 5)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("opts", range(len(OPTION_SETS)))
@pytest.mark.parametrize("rule", EXACT_RULES)
def test_cuda_bit_identical_to_cpu(rule, opts, dtype):
    cpp_cuda_or_skip()
    cls, kw, _ = tp.RULES[rule]
    gen = torch.Generator().manual_seed(1)
    cpu = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    gpu = [p.clone().cuda() for p in cpu]
    o_cpu = cls(cpu, lr=1e-2, backend="cpp", seed=5, **kw, **OPTION_SETS[opts])
    o_gpu = cls(gpu, lr=1e-2, backend="cpp", seed=5, **kw, **OPTION_SETS[opts])
    for step in range(3):
        grads = tp.make_grads(cpu, gen, 1.0, nonfinite=step == 0)
        for p, q, g in zip(cpu, gpu, grads):
            p.grad = g.clone()
            q.grad = g.cuda()
        o_cpu.step()
        o_gpu.step()
        assert o_gpu.last_step_backends == ["cpp"]
        assert o_cpu.nonfinite_count() == o_gpu.nonfinite_count()
        for i, (p, q) in enumerate(zip(cpu, gpu)):
            tp.assert_same(q.cpu(), p, f"{rule} step {step} param {i}")
            for name, value in o_cpu.state[p].items():
                if name == "step":
                    continue
                got = o_gpu.state[q][name].cpu()
                if value.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):  # codes, signed zeros too
                    assert torch.equal(got.view(torch.uint8), value.view(torch.uint8)), \
                        f"{rule} step {step} state {name}: FP8 code bits differ"
                else:
                    tp.assert_same(got, value, f"{rule} step {step} state {name}")


# Packed 4-bit state on the CUDA kernels against the torch reference (on the CPU), bit for bit:
# parameters, codes, block scales and (NVFP4-style) tensor scales. MXFP4 blocks of 32 and 256 and
# NVFP4 blocks of 16 and 64 are encoded from registers, blocks of 2 through shared memory (a lane
# encodes whole bytes there); the shapes give odd element counts (a pad nibble), tensors that are
# not a multiple of the block, one element, and several apply tiles (3 x 4099). Each set names
# its parameter dtype.
FP4_OPTION_SETS = [
    (torch.float32, dict(state_dtype="fp4_e2m1", weight_decay=0.1, wd_mode="decoupled")),
    (torch.bfloat16, dict(state_dtype="fp4_e2m1", state_block=2, weight_decay=0.1, wd_mode="l2", maximize=True,
                          cautious=True, state_rounding="stochastic", param_rounding="stochastic")),
    (torch.float32, dict(state_dtype="fp4_e2m1", state_block=256, cautious=True, state_rounding="stochastic")),
    (torch.bfloat16, dict(state_dtype="fp4_e2m1", state_block=8, weight_decay=0.1, wd_mode="independent")),
    (torch.float32, dict(state_dtype="fp4_e2m1", state_scale="e4m3", weight_decay=0.1)),
    (torch.bfloat16, dict(state_dtype="fp4_e2m1", state_scale="e4m3", state_block=2, cautious=True,
                          state_rounding="stochastic")),
    (torch.float32, dict(state_dtype="fp4_e2m1", state_scale="e4m3", state_block=64, maximize=True, wd_mode="l2",
                         weight_decay=0.1, state_rounding="stochastic")),
]
FP4_SHAPES = [(7, 31), (1031,), (), (3, 4099), (0, 5), (2, 9)]


def assert_same_bits(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal dtypes and bits (codes, E8M0/E4M3 bytes, fp32 values; signed zeros and NaN payloads too)."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs reference {want.dtype}"
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[want.element_size()]
    if not torch.equal(got.view(view), want.view(view)):
        diff = (got.view(view) != want.view(view)).reshape(-1).nonzero()
        raise AssertionError(f"{what}: {diff.numel()} of {want.numel()} differ, first at flat index "
                             f"{int(diff[0])}")


def run_cuda_against_reference(rule: str, opts: dict, dtype: torch.dtype, shapes, steps: int = 3) -> None:
    """``steps`` steps of the cpp backend on CUDA and of the torch reference on the CPU (gradients with
    NaN and inf in the first step); every parameter and state tensor is compared bit for bit."""
    cls, kw, _ = tp.RULES[rule]
    gen = torch.Generator().manual_seed(2)
    ref = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    gpu = [p.clone().cuda() for p in ref]
    common = dict(lr=1e-2, seed=5, fp8_min_numel=0, **kw, **opts)
    o_ref = cls(ref, backend="torch", **common)
    o_gpu = cls(gpu, backend="cpp", **common)
    for step in range(steps):
        grads = tp.make_grads(ref, gen, 1.0, nonfinite=step == 0)
        for p, q, g in zip(ref, gpu, grads):
            p.grad = g.clone()
            q.grad = g.cuda()
        o_ref.step()
        o_gpu.step()
        assert o_gpu.last_step_backends == ["cpp"]
        assert int(o_ref.nonfinite_count()) == int(o_gpu.nonfinite_count())
        for i, (p, q) in enumerate(zip(ref, gpu)):
            assert_same_bits(q.cpu(), p, f"{rule} step {step} param {i}")
            assert set(o_gpu.state[q]) == set(o_ref.state[p]), f"{rule} param {i}: state keys"
            for name, value in o_ref.state[p].items():
                if name != "step":
                    assert_same_bits(o_gpu.state[q][name].cpu(), value, f"{rule} step {step} param {i} {name}")


@pytest.mark.parametrize("opts", range(len(FP4_OPTION_SETS)))
@pytest.mark.parametrize("rule", EXACT_RULES)
def test_cuda_fp4_state_bit_identical_to_reference(rule, opts):
    cpp_cuda_or_skip()
    dtype, options = FP4_OPTION_SETS[opts]
    run_cuda_against_reference(rule, options, dtype, FP4_SHAPES)


@pytest.mark.parametrize("state_scale", [None, "e4m3"])
def test_cuda_fp4_found_inf_changes_nothing_without_host_sync(state_scale):
    """A step that found_inf skips leaves parameters, codes, block scales and (NVFP4) the tensor
    scale as they were, and the packed-state passes (NVFP4's scan and tensor-scale store too)
    do not synchronise with the host."""
    cpp_cuda_or_skip()
    params = [torch.randn(1000, device="cuda"), torch.randn(31, 7, device="cuda")]
    opt = signopt.Lion(params, lr=1e-2, backend="cpp", state_dtype="fp4_e2m1", state_scale=state_scale,
                       fp8_min_numel=0)
    opt.grad_scale = torch.tensor(1024.0, device="cuda")
    opt.found_inf = torch.tensor(0.0, device="cuda")
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [(p.clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params]
    assert (state_scale == "e4m3") == ("m_tensor_scale" in opt.state[params[0]])
    for p in params:
        p.grad = torch.randn_like(p) * 10
    opt.found_inf.fill_(1.0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for i, (p, (q, st)) in enumerate(zip(params, before)):
        assert_same_bits(p, q, f"param {i}")
        for name, value in st.items():
            assert_same_bits(opt.state[p][name], value, f"param {i} {name}")
    opt.found_inf.fill_(0.0)
    opt.step()  # and the next step moves them
    assert not torch.equal(opt.state[params[0]]["m"], before[0][1]["m"])


def test_cuda_fp4_block_of_six():
    """A block that is not a power of two (even, as packed codes need: the op takes it, the
    optimizers offer powers of two only) goes through shared memory: signopt::step on CUDA against
    the same call on the CPU kernels (NaN gradients, stochastic state rounding, an odd count)."""
    cpp_cuda_or_skip()
    gen = torch.Generator().manual_seed(3)
    n = 4099
    p, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen) * 0.1
    g[::17] = float("nan")
    codes, scales = state_format.encode(torch.randn(n, generator=gen) * 0.01, "fp4_e2m1", 6)
    out = {}
    for dev in ("cpu", "cuda"):
        a = core._step_args(n, params=[p.clone().to(dev)], grads=[g.to(dev)], m=[codes.clone().to(dev)],
                            m_scale=[scales.clone().to(dev)], state_format=core.FMT["fp4_e2m1"], state_block=6,
                            state_stochastic_rounding=True, keys=[3, 4])
        bad = core._call(a)
        out[dev] = (int(bad), a["params"][0].cpu(), a["m"][0].cpu(), a["m_scale"][0].cpu())
    assert out["cuda"][0] == out["cpu"][0] == len(range(0, n, 17))
    for got, want, what in zip(out["cuda"][1:], out["cpu"][1:], ("param", "codes", "scales")):
        assert_same_bits(got, want, what)
    assert not torch.equal(out["cpu"][2], codes)  # the state moved


def gpt2_like(device="cuda"):
    d, layers, vocab = 768, 12, 50257
    shapes = [(vocab, d), (1024, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,),
                   (d, 4 * d), (d,)]
    shapes += [(d,), (d,)]
    return [torch.randn(s, device=device) * 0.02 for s in shapes]


def lion_step_activities(params: list[torch.Tensor]) -> list[str]:
    """Names of the GPU activities of one cpp Lion step over ``params`` (after a warm-up step)."""
    for p in params:
        p.grad = torch.randn_like(p)
    opt = signopt.Lion(params, lr=1e-4, backend="cpp")
    opt.step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def test_one_launch_per_group():
    cpp_cuda_or_skip()
    names = lion_step_activities(gpt2_like())
    applies = [n for n in names if "apply_kernel" in n]
    assert len(applies) == 1, names


def test_no_host_sync_in_step():
    cpp_cuda_or_skip()
    params = [torch.randn(1000, device="cuda"), torch.randn(31, 7, device="cuda")]
    opt = signopt.Lion(params, lr=torch.tensor(1e-3, device="cuda"), backend="cpp", weight_decay=0.1)
    opt.grad_scale = torch.tensor(1024.0, device="cuda")
    opt.found_inf = torch.tensor(0.0, device="cuda")
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_capture():
    cpp_cuda_or_skip()
    params = [torch.randn(4099, device="cuda"), torch.randn(64, 33, device="cuda")]
    ref = [p.clone() for p in params]
    grads = [torch.randn_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    for q, g in zip(ref, grads):
        q.grad = g.clone()
    lr = torch.tensor(1e-2, device="cuda")
    opt = signopt.Lion(params, lr=lr, backend="cpp", weight_decay=0.1)
    opt_ref = signopt.Lion(ref, lr=torch.tensor(1e-2, device="cuda"), backend="cpp", weight_decay=0.1)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        opt.step()  # warm-up allocates the state outside the graph
    torch.cuda.current_stream().wait_stream(s)
    opt_ref.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(3):
        graph.replay()
        opt_ref.step()
    torch.cuda.synchronize()
    for p, q in zip(params, ref):
        assert torch.equal(p, q)


def fp8_grid(dtype: torch.dtype) -> torch.Tensor:
    """The non-negative finite values of an FP8 format, ascending (fp32)."""
    codes = torch.arange(128, dtype=torch.uint8).view(dtype).float()
    return codes[codes.isfinite()].unique()


@pytest.mark.parametrize("state_dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_nearest_ties_bit_identical(state_dtype):
    """Nearest-even FP8 encoding on the GPU (cvt.rn.satfinite on sm_89+) gives the CPU's code
    bits -- signed zeros included -- for values exactly halfway between grid points (normal and
    subnormal), on grid points, and below half the smallest subnormal.  Signum with momentum 0
    stores m = g; each 256-block's absmax is Qmax * 2^k, so its scale is exactly 2^k and
    x * (1/scale) is the crafted value itself."""
    cpp_cuda_or_skip()
    fmt = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[state_dtype]
    grid = fp8_grid(fmt)
    qmax = float(grid[-1])
    mids = (grid[1:] + grid[:-1]) / 2
    tiny = torch.tensor([0.0, grid[1] / 4, grid[1] / 2])  # the last one ties to 0
    vals = torch.cat([grid, mids, tiny])
    vals = torch.cat([vals, -vals])
    blocks = []
    for k in (0, -20, 9):  # blocks of [Qmax, 255 crafted values, zero padding] * 2^k
        scale = torch.tensor(qmax * 2.0 ** k) * torch.tensor(1 / qmax)
        assert float(scale) == 2.0 ** k  # so that the ties stay exact ties after x * (1/scale)
        for chunk in vals.split(255):
            block = torch.cat([torch.tensor([qmax]), chunk, torch.zeros(255 - chunk.numel())])
            blocks.append(block * 2.0 ** k)
    g = torch.cat(blocks)
    cpu, gpu = torch.zeros_like(g), torch.zeros(g.numel(), device="cuda")
    opts = dict(lr=1e-3, momentum=0.0, backend="cpp", state_dtype=state_dtype, state_block=256,
                fp8_min_numel=0)
    o_cpu, o_gpu = signopt.Signum([cpu], **opts), signopt.Signum([gpu], **opts)
    cpu.grad, gpu.grad = g.clone(), g.cuda()
    o_cpu.step()
    o_gpu.step()
    m_cpu, m_gpu = o_cpu.state[cpu]["m"], o_gpu.state[gpu]["m"].cpu()
    assert torch.equal(m_gpu.view(torch.uint8), m_cpu.view(torch.uint8))
    assert torch.equal(o_gpu.state[gpu]["m_scale"].cpu(), o_cpu.state[cpu]["m_scale"])
    assert torch.equal(gpu.cpu(), cpu)


def test_bf16_nearest_ties_nan_bit_identical():
    """bf16 parameter stores on the GPU (cvt.rn.bf16x2.f32, with casts.h's form for a pair that
    holds a NaN) give the CPU's bits: SignSGD with lr = 2^-9 puts every p in [0.5, 1) exactly
    halfway between two bf16 values; NaN, +-inf, subnormal and largest finite params ride along."""
    cpp_cuda_or_skip()
    half = torch.arange(0x3F00, 0x3F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)  # [0.5, 1)
    special = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), 1e-39, -1e-39,
                            3.3895e38, 1.0, -1.0, 0.0, -0.0], dtype=torch.bfloat16)
    p = torch.cat([half, -half, special, half[:5]])  # 5 extra: a pair of NaNs/ties in each 8
    g = torch.where(torch.arange(p.numel()) % 3 == 0, -1.0, 1.0).to(torch.bfloat16)
    cpu, gpu = p.clone(), p.cuda()
    cpu.grad, gpu.grad = g.clone(), g.cuda()
    for x in (cpu, gpu):
        signopt.SignSGD([x], lr=2.0 ** -9, backend="cpp").step()
    assert torch.equal(gpu.cpu().view(torch.int16), cpu.view(torch.int16))
    assert not torch.equal(cpu[:128].float(), half.float() - 2.0 ** -9)  # ties were rounded

"""The shared parity harness (``tests/test_parity.py``) run for ``backend="triton"``.

Same rules, comparisons and helpers as the harness (bitwise for exact rules, 2 ulp for
sqrt/pow rules, every state tensor after every step, no silent fallback). Without a GPU the
kernels run in the Triton interpreter (``TRITON_INTERPRET=1``, set by ``conftest.py``), which
costs about a second per three-step run, so instead of the harness's hypothesis budget (25
draws per rule and dtype) each rule runs deterministic scenarios that rotate through every
option — state formats (fp32, bf16, E4M3, E5M2 with power-of-two and odd blocks), rounding
modes, weight-decay modes, maximize, cautious, tensor lr, GradScaler scale and ``found_inf``,
non-finite gradients — and every parameter dtype, on small tensors cut into many programs,
chunks and segments by a small launch configuration. On a GPU, the full harness runs with
``BACKENDS`` including ``"triton"`` (``bench/gpu_check.sh``).
"""
from __future__ import annotations

import pytest
import torch

tp = pytest.importorskip("test_parity")

# the interpreter evaluates log(0) and 0/0 in numpy (then masked, as on the GPU)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

BACKEND = "triton"
SHAPES = [(7, 31), (257,), ()]

SCENARIOS = [
    (dict(weight_decay=0.1, wd_mode="decoupled", maximize=False, cautious=False, state_dtype="fp32",
          state_block=256, fp8_min_numel=0, state_rounding="nearest", param_rounding="nearest"),
     dict(tensor_lr=False, scaler=None, nonfinite=True, seed=1)),
    (dict(weight_decay=0.1, wd_mode="l2", maximize=True, cautious=True, state_dtype="bf16",
          state_block=256, fp8_min_numel=0, state_rounding="stochastic", param_rounding="stochastic"),
     dict(tensor_lr=True, scaler=(1024.0, 0.0), nonfinite=True, seed=2)),
    (dict(weight_decay=0.1, wd_mode="independent", maximize=False, cautious=False,
          state_dtype="fp8_e4m3", state_block=32, fp8_min_numel=200, state_rounding="nearest",
          param_rounding="nearest"),
     dict(tensor_lr=False, scaler=(8.0, 1.0), nonfinite=True, seed=3)),
    (dict(weight_decay=0.0, wd_mode="decoupled", maximize=True, cautious=True,
          state_dtype="fp8_e5m2", state_block=3, fp8_min_numel=0, state_rounding="stochastic",
          param_rounding="stochastic"),
     dict(tensor_lr=True, scaler=None, nonfinite=False, seed=4)),
]
COMPLEX_RULES = ("lion", "stosign_row", "lion_row_l2")


def _cases():
    """Each rule once, rotating scenarios and parameter dtypes."""
    dtypes = ["fp32", "bf16", "fp16", "bf16"]
    out = []
    for i, rule in enumerate(tp.RULES):
        dtype = "complex64" if rule in COMPLEX_RULES and i % 2 else dtypes[i % len(dtypes)]
        out.append(pytest.param(rule, dtype, i % len(SCENARIOS), id=f"{rule}-{dtype}-s{i % len(SCENARIOS)}"))
    # every scenario at least once on Lion in fp32 (the most used rule)
    for k in range(len(SCENARIOS)):
        out.append(pytest.param("lion", "fp32", k, id=f"lion-fp32-s{k}"))
    return out


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Small tiles so tiny tensors still span several programs, chunks and segments."""
    tp.backend_or_skip(BACKEND)
    from signopt.kernels import launch

    monkeypatch.setattr(launch, "CONFIG", launch.LaunchConfig(
        update_block=64, update_warps=4, reduce_block=32, reduce_warps=4, finalize_segments=4))


@pytest.mark.parametrize("rule,dtype_name,scenario", _cases())
def test_parity_triton(rule, dtype_name, scenario):
    opts, ex = SCENARIOS[scenario]
    tp.run_and_compare(BACKEND, rule, tp.DTYPES[dtype_name], SHAPES, dict(opts), dict(ex))


MX_SCENARIOS = [
    (dict(weight_decay=0.1, wd_mode="decoupled", maximize=False, cautious=False, state_dtype="mxfp8_e4m3",
          state_block=None, fp8_min_numel=200, state_rounding="nearest", param_rounding="nearest"),
     dict(tensor_lr=False, scaler=(8.0, 1.0), nonfinite=True, seed=5)),
    (dict(weight_decay=0.1, wd_mode="l2", maximize=True, cautious=True, state_dtype="mxfp8_e5m2",
          state_block=2, fp8_min_numel=0, state_rounding="stochastic", param_rounding="stochastic"),
     dict(tensor_lr=True, scaler=None, nonfinite=True, seed=6)),
    (dict(weight_decay=0.1, wd_mode="decoupled", maximize=False, cautious=False, state_dtype="fp4_e2m1",
          state_block=4, fp8_min_numel=0, state_rounding="stochastic", param_rounding="nearest"),
     dict(tensor_lr=False, scaler=(8.0, 1.0), nonfinite=True, seed=7)),
]


@pytest.mark.parametrize("rule,dtype_name,scenario", [("lion", "bf16", 0), ("lion", "fp32", 1),
                                                      ("stosign_element", "fp32", 1), ("conv_adamw", "fp16", 0),
                                                      ("signum", "bf16", 1), ("lion", "fp32", 2),
                                                      ("stosign_element", "bf16", 2)])
def test_parity_triton_mx(rule, dtype_name, scenario):
    """MX state (E8M0 block scales): MXFP8 at the default block and a block of 2, MXFP4 (packed
    codes, an odd-sized tensor) at a block of 4, both roundings."""
    opts, ex = MX_SCENARIOS[scenario]
    tp.run_and_compare(BACKEND, rule, tp.DTYPES[dtype_name], SHAPES, dict(opts), dict(ex))


NVFP4 = dict(state_dtype="fp4_e2m1", state_scale="e4m3")
NVFP4_SCENARIOS = [
    (dict(weight_decay=0.1, wd_mode="decoupled", maximize=False, cautious=True, state_block=None,
          fp8_min_numel=200, state_rounding="nearest", param_rounding="nearest", **NVFP4),
     dict(tensor_lr=False, scaler=(8.0, 1.0), nonfinite=True, seed=8)),
    (dict(weight_decay=0.1, wd_mode="l2", maximize=True, cautious=False, state_block=2,
          fp8_min_numel=0, state_rounding="stochastic", param_rounding="stochastic", **NVFP4),
     dict(tensor_lr=True, scaler=None, nonfinite=True, seed=9)),
    (dict(weight_decay=0.05, wd_mode="independent", maximize=False, cautious=False, state_block=32,
          fp8_min_numel=0, state_rounding="stochastic", param_rounding="nearest", **NVFP4),
     dict(tensor_lr=False, scaler=(1024.0, 0.0), nonfinite=False, seed=10)),
]


def _off_default_betas(rule: str) -> dict:
    """EMA coefficients away from each optimizer's defaults (none for SignSGD)."""
    import signopt

    cls = tp.RULES[rule][0]
    if issubclass(cls, signopt.StoSignSGD):
        return {"beta": 0.8}
    if issubclass(cls, signopt.SignConversion):
        return {"betas": (0.8, 0.95)}
    if issubclass(cls, signopt.LionKappa):
        return {"betas": (0.85, 0.97)}
    if issubclass(cls, signopt.Signum):
        return {"momentum": 0.8}
    return {}


@pytest.mark.parametrize("scenario", range(len(NVFP4_SCENARIOS)))
@pytest.mark.parametrize("rule", list(tp.RULES))
def test_parity_triton_nvfp4(rule, scenario):
    """NVFP4 state (``state_dtype="fp4_e2m1", state_scale="e4m3"``: packed E2M1 codes, E4M3 block
    scales, an fp32 tensor scale from the new state's whole-tensor absmax) in every rule, bit for
    bit with the torch reference (within the harness's ulp bounds for sqrt/pow rules): the default
    block of 16 (with a tensor kept fp32 under ``fp8_min_numel``), blocks of 2 and 32, odd sizes,
    nearest and stochastic state rounding, off-default EMA coefficients, GradScaler with
    ``found_inf``, non-finite gradients, every parameter dtype."""
    opts, ex = NVFP4_SCENARIOS[scenario]
    dtype = ["fp32", "bf16", "fp16"][(list(tp.RULES).index(rule) + scenario) % 3]
    tp.run_and_compare(BACKEND, rule, tp.DTYPES[dtype], SHAPES, dict(opts, **_off_default_betas(rule)), dict(ex))


@pytest.mark.parametrize("rule", ["lion_row_l2", "stosign_block", "conv_adamw_tensor"])
def test_parity_triton_large(rule, monkeypatch):
    """Tensors of thousands of elements at the shipped launch configuration."""
    from signopt.kernels import launch

    monkeypatch.setattr(launch, "CONFIG", launch.LaunchConfig())
    opts = dict(weight_decay=0.1, wd_mode="decoupled", maximize=False, cautious=True,
                state_dtype="bf16", state_block=256, fp8_min_numel=0, state_rounding="stochastic",
                param_rounding="nearest")
    ex = dict(tensor_lr=False, scaler=None, nonfinite=True, seed=7)
    tp.run_and_compare(BACKEND, rule, torch.float32, [(3, 1500), (2500,), (5, 4, 7)], opts, ex)


def test_zero_size_and_no_grad():
    tp.test_zero_size_and_no_grad(BACKEND)


def test_explicit_backend_rejects_unsupported():
    tp.test_explicit_backend_rejects_unsupported(BACKEND)


@pytest.mark.parametrize("offset", [2, 2**34 - 101])
@pytest.mark.parametrize("rule,state_block", [("stosign_element", 7), ("conv_lion_grad", 32),
                                              ("lion", 3)])
def test_parity_triton_shard_offset(rule, state_block, offset, monkeypatch):
    """Random bits v2 follow the full-tensor index: parameters that are shards starting at an
    index that is not a multiple of 4 (so no update tile, FP8 block row or cautious-count chunk
    starts on a Philox call boundary), and whose Philox call index crosses 2**32, draw the
    reference's stochastic signs and stochastic state and parameter roundings."""
    from signopt import sharding

    monkeypatch.setattr(sharding, "index_offset", lambda p: offset)
    opts = dict(weight_decay=0.1, wd_mode="decoupled", maximize=False, cautious=True,
                state_dtype="fp8_e4m3", state_block=state_block, fp8_min_numel=0,
                state_rounding="stochastic", param_rounding="stochastic")
    ex = dict(tensor_lr=False, scaler=None, nonfinite=True, seed=11)
    tp.run_and_compare(BACKEND, rule, torch.bfloat16, SHAPES, opts, ex)

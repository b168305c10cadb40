"""FSDP2 (fully_shard, gloo, CPU mesh): sharded steps equal unsharded ones bit for bit, for exact
and stochastic rules, every state format and backend; whole-tensor reductions are refused."""
from __future__ import annotations

import pytest
import torch

import harness
from signopt import build

BASE = {"lr": 1e-2, "seed": 1}
EXACT = [
    {"optimizer": "SignSGD"},
    {"optimizer": "Signum", "weight_decay": 0.1, "wd_mode": "independent"},
    {"optimizer": "Lion", "weight_decay": 0.1},
    {"optimizer": "Lion", "weight_decay": 0.1, "state_dtype": "fp8_e4m3", "state_block": 64,
     "fp8_min_numel": 256},
    {"optimizer": "LionKappa", "kappa": "huber", "huber_delta": 0.01, "state_dtype": "bf16"},
    {"optimizer": "LionKappa", "kappa": "row_l2", "bias": False},
    {"optimizer": "LionKappa", "kappa": "callable:elementwise"},
    {"optimizer": "StoSignSGD", "state_dtype": "bf16", "state_rounding": "stochastic"},
    {"optimizer": "StoSignSGD", "envelope": "row", "state_dtype": "fp8_e5m2", "state_block": 64,
     "fp8_min_numel": 256, "bias": False},
    {"optimizer": "SignConversion", "base": "adamw", "envelope": "block", "envelope_block": 64,
     "bias": False},
    {"optimizer": "SignConversion", "base": "lion", "maximize": True},
    {"optimizer": "wrapper", "envelope": "block", "envelope_block": 64, "bias": False},
    {"optimizer": "Lion", "weight_decay": 0.1, "state_dtype": "mxfp8_e4m3", "state_block": 64,
     "fp8_min_numel": 256},
    {"optimizer": "StoSignSGD", "envelope": "row", "state_dtype": "mxfp8_e5m2", "fp8_min_numel": 256,
     "state_rounding": "stochastic", "bias": False},
    {"optimizer": "Signum", "state_dtype": "fp4_e2m1", "state_block": 64, "fp8_min_numel": 256},
]
MX = [j for j, d in enumerate(EXACT) if d.get("state_dtype", "").startswith(("mx", "fp4"))]
REFUSED = [
    ({"optimizer": "LionKappa", "kappa": "l2"}, "norm of the whole tensor"),
    ({"optimizer": "LionKappa", "kappa": "lp", "p": 3.0}, "norm of the whole tensor"),
    ({"optimizer": "LionKappa", "kappa": "row_l2"}, "splits rows"),  # 1-D biases: one row
    ({"optimizer": "LionKappa", "kappa": "callable"}, "callable kappa"),
    ({"optimizer": "StoSignSGD", "envelope": "tensor"}, "max over the whole tensor"),
    ({"optimizer": "StoSignSGD", "envelope": "block", "envelope_block": 64}, "envelope_block=64"),
    ({"optimizer": "Lion", "cautious": True}, "count of kept elements"),
    ({"optimizer": "Lion", "state_dtype": "fp8_e4m3", "state_block": 96, "fp8_min_numel": 256},
     "state_block=96"),
    ({"optimizer": "wrapper", "envelope": "tensor"}, "max over the whole tensor"),
    ({"optimizer": "Lion", "state_dtype": "fp4_e2m1", "state_scale": "e4m3", "fp8_min_numel": 256},
     "one fp32 scale per tensor"),
]


def _spec(d: dict, backend: str = "torch") -> dict:
    out = {**d, "lr": BASE["lr"]}
    if d["optimizer"] != "wrapper":
        out.update(seed=BASE["seed"], backend=backend)
    return out


def _triton_runs_here() -> bool:
    """Triton runs on these CPU shards only in its interpreter (set by tests/conftest.py)."""
    import importlib.util
    import os
    return importlib.util.find_spec("triton") is not None and os.environ.get("TRITON_INTERPRET") == "1"


def _kernel_specs() -> list[tuple[str, dict]]:
    """(label, spec) of the kernel-backend runs: they get the same local slots as torch."""
    out = []
    if build.is_built():  # the C++ kernels (never compiled here)
        out += [(f"cpp-{j}", _spec(d, "cpp")) for j, d in enumerate(EXACT[:10])
                if d["optimizer"] != "wrapper" and d.get("kappa") != "callable:elementwise"]
        out += [(f"cpp-{j}", _spec(EXACT[j], "cpp")) for j in MX]
    if _triton_runs_here():  # a few rules: the interpreter is slow
        out += [(f"triton-{j}", _spec(EXACT[j], "triton")) for j in (2, 3, 7, 8, MX[0])]
    return out


KERNEL_SPECS = _kernel_specs()
SPECS = [_spec(d) for d in EXACT] + [_spec(d) for d, _ in REFUSED] + [s for _, s in KERNEL_SPECS]


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    runs = [["fsdp_equal", {"specs": SPECS, "steps": 3}], ["fsdp_step_refusal", {}]]
    return harness.run("suite", 2, tmp_path_factory.mktemp("fsdp"), timeout=170, runs=runs)


def _exact_cases():
    cases = [(i, EXACT[i]["optimizer"] + "-" + str(i) + "-torch") for i in range(len(EXACT))]
    cases += [(len(EXACT) + len(REFUSED) + j, label) for j, (label, _) in enumerate(KERNEL_SPECS)]
    return cases


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and values (FP8 compared as raw bytes)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.element_size() == 1:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return torch.equal(a, b)


@pytest.mark.parametrize("index", [i for i, _ in _exact_cases()], ids=[n for _, n in _exact_cases()])
def test_sharded_equals_unsharded(fsdp_results, index):
    for rank_results in fsdp_results:
        r = rank_results[0][index]
        if "skipped" in r:
            pytest.skip(r["skipped"])
        assert "refused" not in r, r.get("refused")
        for p, q in zip(r["params"], r["ref_params"]):
            assert torch.equal(p, q)
        assert r["state"].keys() == r["ref_state"].keys()
        for k in r["state"]:
            assert r["state"][k].keys() == r["ref_state"][k].keys()
            for name in r["state"][k]:
                assert _same(r["state"][k][name], r["ref_state"][k][name]), (k, name)


@pytest.mark.parametrize("offset", range(len(REFUSED)), ids=[f"{d['optimizer']}-{w[:20]}" for d, w in REFUSED])
def test_reductions_refused_at_construction(fsdp_results, offset):
    words = REFUSED[offset][1]
    for rank_results in fsdp_results:
        r = rank_results[0][len(EXACT) + offset]
        assert "refused" in r, "a rule needing a whole-tensor reduction ran on shards"
        assert words in r["refused"] and "refuses rather than approximate" in r["refused"]


def test_reduction_refused_at_step_touches_nothing(fsdp_results):
    for rank_results in fsdp_results:
        r = rank_results[1]
        assert "count of kept elements" in r["message"]
        assert r["unchanged"]

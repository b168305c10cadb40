"""The bits of every rule x dtype x state x option combination, locked by a recorded digest.

Each case runs five steps (the second and fourth with NaN and inf gradients, the third with exact
zeros) over three tensors (2-D, a 1-D one spanning several FP8 blocks, and one below
``fp8_min_numel``) and hashes the parameters and every stored state tensor (codes, scales, step
counters) byte for byte. The digests in ``tests/fixtures/step_digests.json`` were recorded with
``python tests/test_step_digest.py --record`` at commit f86321f, before the declaration refactor,
which must not change any bit; a change of the numerics contract re-records them and says so in
its commit.

Recorded per backend: the C++ backend for every case; the torch reference for the cases whose
rules are exact (the fp32 sqrt of torch's vectorised CPU kernels is not correctly rounded on
every ISA, so its adamw/norm bits may differ between machines; the parity harness checks those
within 2 ulp); the Triton interpreter for a subset (it is slow). Lion-kappa ``lp`` is left out
of the C++ digests: its ``pow`` comes from the C library, whose last bit may differ between
machines.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

import signopt
from signopt import backends as backend_registry

FIXTURE = Path(__file__).parent / "fixtures" / "step_digests.json"
SHAPES = [(5, 7), (300,), (3,)]
STEPS = 5

RULES = {
    "sign": (signopt.SignSGD, {}),
    "signum": (signopt.Signum, {"momentum": 0.8}),
    "lion_l1": (signopt.Lion, {"betas": (0.9, 0.99)}),
    "lion_l2sq": (signopt.LionKappa, {"kappa": "l2sq", "betas": (0.8, 0.95)}),
    "lion_huber": (signopt.LionKappa, {"kappa": "huber", "huber_delta": 0.05}),
    "lion_l2": (signopt.LionKappa, {"kappa": "l2"}),
    "lion_row_l2": (signopt.LionKappa, {"kappa": "row_l2"}),
    "lion_lp": (signopt.LionKappa, {"kappa": "lp", "p": 1.5}),
}
for _base in ("sgd", "momentum", "adamw", "lion"):
    for _env in ("element", "row", "block", "tensor"):
        for _src in ("direction", "grad"):
            RULES[f"conv_{_base}_{_env}_{_src}"] = (signopt.SignConversion, {
                "base": _base, "envelope": _env, "envelope_source": _src, "envelope_block": 9,
                "envelope_decay": 0.9, "betas": (0.9, 0.99) if _base == "lion" else (0.9, 0.999)})
# rules whose torch-reference bits depend on the machine's sqrt/pow (see the module docstring)
NOT_EXACT = {"lion_l2", "lion_row_l2", "lion_lp"} | {r for r in RULES if r.startswith("conv_adamw")}
NO_CPP = {"lion_lp"}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NVFP4 = {"state_dtype": "fp4_e2m1", "state_scale": "e4m3"}


def _cases() -> dict[str, dict]:
    """name -> (rule, param dtype, options)."""
    cases: dict[str, dict] = {}
    for rule in RULES:
        cases[f"{rule}/fp32/fp32"] = {"rule": rule, "dtype": "fp32", "opts": {}}
    for rule in ("signum", "lion_l1", "lion_l2", "conv_momentum_element_direction",
                 "conv_adamw_row_grad", "conv_lion_block_direction", "conv_sgd_element_grad"):
        for dtype in DTYPES:
            for state in ("fp32", "bf16", "fp8_e4m3", "fp8_e5m2", "mxfp8_e4m3", "mxfp8_e5m2", "fp4_e2m1"):
                if (dtype, state) != ("fp32", "fp32"):
                    cases[f"{rule}/{dtype}/{state}"] = {"rule": rule, "dtype": dtype,
                                                        "opts": {"state_dtype": state}}
            cases[f"{rule}/{dtype}/nvfp4"] = {"rule": rule, "dtype": dtype, "opts": NVFP4}
    variants = {
        "wd_decoupled": {"weight_decay": 0.5},
        "wd_independent": {"weight_decay": 0.5, "wd_mode": "independent"},
        "wd_l2": {"weight_decay": 0.5, "wd_mode": "l2"},
        "maximize": {"maximize": True},
        "cautious": {"cautious": True},
        "tensor_lr": {"tensor_lr": True, "weight_decay": 0.25},
        "state_sr_bf16": {"state_dtype": "bf16", "state_rounding": "stochastic"},
        "state_sr_e4m3": {"state_dtype": "fp8_e4m3", "state_rounding": "stochastic", "state_block": 7},
        "state_sr_mxe4m3": {"state_dtype": "mxfp8_e4m3", "state_rounding": "stochastic", "state_block": 8},
        "state_sr_mxe5m2": {"state_dtype": "mxfp8_e5m2", "state_rounding": "stochastic", "state_block": 64},
        "state_sr_fp4": {"state_dtype": "fp4_e2m1", "state_rounding": "stochastic", "state_block": 4},
        "state_sr_nvfp4": {**NVFP4, "state_rounding": "stochastic", "state_block": 8},
        "param_sr": {"param_rounding": "stochastic"},
        "scaler_skip": {"scaler": True},
    }
    for rule in ("sign", "lion_l1", "lion_huber", "conv_momentum_element_direction", "conv_adamw_block_grad",
                 "conv_lion_tensor_direction"):
        for name, opts in variants.items():
            dtype = "bf16" if name == "param_sr" else "fp32"
            if rule == "sign" and name.startswith("state_sr"):
                continue
            cases[f"{rule}/{dtype}/{name}"] = {"rule": rule, "dtype": dtype, "opts": opts}
    return cases


CASES = _cases()
TRITON_CASES = ["sign/fp32/fp32", "signum/bf16/fp8_e4m3", "lion_l1/fp32/fp32", "lion_l1/fp16/bf16",
                "lion_huber/fp32/cautious", "lion_l1/fp32/wd_independent", "lion_l1/bf16/param_sr",
                "conv_momentum_element_direction/fp32/fp32", "conv_sgd_block_grad/fp32/fp32",
                "conv_lion_row_direction/fp32/fp32", "conv_momentum_element_direction/fp32/state_sr_e4m3",
                "conv_lion_tensor_direction/fp32/scaler_skip", "signum/bf16/mxfp8_e4m3",
                "lion_l1/fp16/mxfp8_e5m2", "conv_momentum_element_direction/fp32/state_sr_mxe4m3",
                "signum/bf16/fp4_e2m1", "lion_l1/fp32/state_sr_fp4"]


def _grads(params: list[torch.Tensor], gen: torch.Generator, step: int) -> list[torch.Tensor]:
    out = []
    for p in params:
        g = torch.randn(p.shape, generator=gen) * 0.1
        if step in (1, 3):
            flat = g.view(-1)
            flat[::11] = float("nan")
            flat[5::13] = float("inf")
            flat[7::17] = -float("inf")
        if step == 2:
            g.view(-1)[::4] = 0.0  # exact zeros: sign and envelope boundaries
        out.append(g.to(p.dtype))
    return out


def digest(case: dict, backend: str) -> str:
    """sha256 (16 hex digits) of the parameters and state after the case's steps on ``backend``."""
    cls, rule_kw = RULES[case["rule"]]
    opts = dict(case["opts"])
    tensor_lr = opts.pop("tensor_lr", False)
    scaler = opts.pop("scaler", False)
    gen = torch.Generator().manual_seed(1234)
    dtype = DTYPES[case["dtype"]]
    params = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    kw = {"state_block": 32, "fp8_min_numel": 16, **rule_kw, **opts}
    lr = torch.tensor(0.01) if tensor_lr else 0.01
    opt = cls(params, lr=lr, seed=2**40 + 77, backend=backend, **kw)
    for step in range(STEPS):
        for p, g in zip(params, _grads(params, gen, step)):
            p.grad = g
        if scaler:
            opt.grad_scale = torch.tensor(4.0)
            opt.found_inf = torch.tensor(1.0 if step == 1 else 0.0)
        if tensor_lr:
            lr.mul_(0.5)
        opt.step()
        assert opt.last_step_backends == [backend]
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes())
        st = opt.state[p]
        for key in sorted(st):
            t = st[key].detach().contiguous()
            h.update(key.encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _recorded() -> dict:
    return json.loads(FIXTURE.read_text())


def _backend_or_skip(name: str) -> None:
    try:
        backend_registry.load(name)
    except backend_registry.BackendUnavailable as exc:
        pytest.skip(f"backend {name!r} unavailable: {exc}")


def test_fixture_lists_every_case():
    rec = _recorded()
    assert set(rec["cpp"]) == {c for c in CASES if CASES[c]["rule"] not in NO_CPP}
    assert set(rec["torch"]) == {c for c in CASES if CASES[c]["rule"] not in NOT_EXACT}
    assert set(rec["triton"]) == set(TRITON_CASES)


@pytest.mark.parametrize("name", [c for c in CASES if CASES[c]["rule"] not in NOT_EXACT])
def test_torch_digest(name):
    assert digest(CASES[name], "torch") == _recorded()["torch"][name]


@pytest.mark.parametrize("name", [c for c in CASES if CASES[c]["rule"] not in NO_CPP])
def test_cpp_digest(name):
    _backend_or_skip("cpp")
    assert digest(CASES[name], "cpp") == _recorded()["cpp"][name]


@pytest.mark.parametrize("name", TRITON_CASES)
def test_triton_digest(name):
    _backend_or_skip("triton")
    assert digest(CASES[name], "triton") == _recorded()["triton"][name]


def test_cases_differ():
    """The digest sees what the cases change: no two recorded cases hash alike, except the sgd
    base's two envelope sources (its direction is the gradient)."""
    rec = _recorded()["cpp"]
    same = {}
    for name, h in rec.items():
        same.setdefault(h, []).append(name)
    collisions = sorted(sorted(names) for names in same.values() if len(names) > 1)
    assert collisions == [[f"conv_sgd_{env}_direction/fp32/fp32", f"conv_sgd_{env}_grad/fp32/fp32"]
                          for env in ("block", "element", "row", "tensor")]


if __name__ == "__main__" and sys.argv[1:] in (["--record"], ["--record-new"]):
    # --record: every case; --record-new: only the cases the fixture lacks (a new format or
    # option), every recorded digest kept as it is
    import os
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    old = _recorded() if sys.argv[1] == "--record-new" else {"cpp": {}, "torch": {}, "triton": {}}
    new = {"cpp": [n for n, c in CASES.items() if c["rule"] not in NO_CPP],
           "torch": [n for n, c in CASES.items() if c["rule"] not in NOT_EXACT], "triton": TRITON_CASES}
    out = {b: {n: old[b][n] if n in old[b] else digest(CASES[n], b) for n in names} for b, names in new.items()}
    for b in old:
        for n in set(old[b]) - set(out[b]):
            raise SystemExit(f"{b} {n}: recorded but no longer a case; nothing recorded")
    for n in out["torch"]:
        if n in out["cpp"] and out["torch"][n] != out["cpp"][n]:
            raise SystemExit(f"{n}: torch and cpp differ; nothing recorded")
    for n in out["triton"]:
        if out["triton"][n] != out["cpp"][n]:
            raise SystemExit(f"{n}: triton and cpp differ; nothing recorded")
    FIXTURE.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"recorded {sum(map(len, out.values()))} digests in {FIXTURE}")

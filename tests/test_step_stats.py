"""Step statistics (``step_stats=True``, ``opt.step_stats()``): each statistic against an fp64
computation written here (weight decay, NaN/inf gradients, sign reversals, several groups, bf16
and FP8 state), on the torch, cpp and Triton (interpreter, ``TRITON_INTERPRET=1``) backends with
CPU tensors and on the cpp backend's CUDA kernels (marked ``cuda``: skipped without a GPU); the
backends against the torch reference over every rule; the option's checks; and that it changes
nothing of the step itself."""
from __future__ import annotations

import math

import pytest
import torch

import signopt
from signopt import backends as backend_registry


def _available(name: str) -> bool:
    try:
        backend_registry.load(name)
        return True
    except backend_registry.BackendUnavailable:
        return False


BACKENDS = ("torch",) + tuple(b for b in ("cpp", "triton") if _available(b))  # triton: the interpreter
# (backend, device) of each run: every backend on CPU tensors, and the cpp backend's CUDA kernels
TARGETS = [pytest.param(b, "cpu", id=b) for b in BACKENDS] + (
    [pytest.param("cpp", "cuda", id="cpp-cuda", marks=pytest.mark.cuda)] if "cpp" in BACKENDS else [])


def _device(backend: str, device: str) -> torch.device:
    """The device of a run (skips a CUDA run where the extension has no CUDA kernels)."""
    if device == "cuda" and not backend_registry.load(backend).has_cuda:
        pytest.skip("the signopt extension was built without CUDA kernels")
    return torch.device(device)

STEPS = 4


# ------------------------------------------------------------------------------ fp64 oracle
def _decoded(state: dict, name: str, block: int) -> torch.Tensor:
    """A state slot's values in fp64 (FP8: codes times their block's scale), flat."""
    x = state[name].double().reshape(-1)
    scales = state.get(f"{name}_scale")
    if scales is None:
        return x
    return x * scales.double().repeat_interleave(block)[: x.numel()]


class Oracle:
    """Sign, Signum and Lion (l1) in fp64 from the decoded state, and the statistics of a group."""

    def __init__(self, family: str, betas: tuple[float, float], block: int) -> None:
        self.family, self.betas, self.block = family, betas, block
        self.prev: dict[int, torch.Tensor] = {}  # per parameter: the previous update sign

    def group(self, opt, group: dict, grads: list[torch.Tensor]) -> dict:
        """The statistics of the step about to run on ``group`` (read before it runs)."""
        lr, wd = group["lr"], group["weight_decay"]
        b1, b2 = self.betas
        sq, flips, bad_total, numel = 0.0, 0, 0, 0
        absmax = 0.0
        for p, g in zip(group["params"], grads):
            g = g.double().reshape(-1)
            pd = p.detach().double().reshape(-1)
            bad = ~torch.isfinite(g)
            g = torch.where(bad, 0.0, g)
            st = opt.state.get(p, {})
            if self.family == "sign":
                u = torch.sign(g)
            elif self.family == "signum":
                m_old = _decoded(st, "m", self.block) if st else torch.zeros_like(g)
                m = torch.where(bad, m_old, m_old * b1 + g * (1 - b1))
                u = torch.sign(m)
            else:
                m_old = _decoded(st, "m", self.block) if st else torch.zeros_like(g)
                u = torch.sign(m_old * b1 + g * (1 - b1))
                m = torch.where(bad, m_old, m_old * b2 + g * (1 - b2))
            if self.family != "sign":
                absmax = max(absmax, float(m.abs().max()))
            d = torch.where(bad, 0.0, pd * (1.0 - lr * wd) - lr * u - pd)
            sq += float((d * d).sum())
            sign = torch.sign(u).to(torch.int8)
            prev = self.prev.get(id(p), torch.zeros_like(sign))
            flips += int(((sign * prev < 0) & ~bad).sum())
            self.prev[id(p)] = torch.where(bad, prev, sign)
            bad_total += int(bad.sum())
            numel += g.numel()
        return {"update_rms": math.sqrt(sq / numel), "sign_flip_fraction": flips / numel, "nonfinite": bad_total,
                "state_absmax": {} if self.family == "sign" else {"m": absmax}, "numel": numel}


def _grads(shapes, step: int, gen: torch.Generator, dtype: torch.dtype) -> list[torch.Tensor]:
    """Gradients whose signs change from step to step; NaN and inf in steps 1 and 2."""
    out = []
    for i, shape in enumerate(shapes):
        g = torch.randn(shape, generator=gen) * (1.0 + 3.0 * (step % 2))
        flat = g.view(-1)
        if step in (1, 2):
            flat[(i + step) % flat.numel()] = float("nan")
            flat[(3 * i + 2 * step + 1) % flat.numel()] = float("inf") if step == 1 else -float("inf")
        out.append(g.to(dtype))
    return out


ORACLE_CASES = {
    "lion_fp32": (signopt.Lion, "lion", torch.float32, dict(betas=(0.9, 0.99))),
    "lion_bf16_bf16": (signopt.Lion, "lion", torch.bfloat16, dict(betas=(0.9, 0.99), state_dtype="bf16")),
    "lion_fp8": (signopt.Lion, "lion", torch.float32,
                 dict(betas=(0.8, 0.95), state_dtype="fp8_e4m3", state_block=64, fp8_min_numel=0)),
    "signum_fp8_e5m2": (signopt.Signum, "signum", torch.float32,
                        dict(momentum=0.7, state_dtype="fp8_e5m2", state_block=32, fp8_min_numel=0)),
    "signum_bf16": (signopt.Signum, "signum", torch.bfloat16, dict(momentum=0.9)),
    "sign": (signopt.SignSGD, "sign", torch.float32, {}),
}
SHAPES = ((7, 37), (1029,), (3,))  # vector-loop tails, several FP8 blocks, a tiny tensor


@pytest.mark.parametrize("backend, device", TARGETS)
@pytest.mark.parametrize("case", ORACLE_CASES)
def test_statistics_match_fp64(case, backend, device):
    dev = _device(backend, device)
    cls, family, dtype, options = ORACLE_CASES[case]
    gen = torch.Generator().manual_seed(1)
    groups = [[torch.randn(s, generator=gen).to(dev, dtype) for s in SHAPES[:2]],
              [torch.randn(SHAPES[2], generator=gen).to(dev, dtype)]]
    opt = cls([{"params": groups[0], "weight_decay": 0.1},
               {"params": groups[1], "lr": 0.02, "weight_decay": 0.0}],
              lr=0.01, backend=backend, step_stats=True, seed=0, **options)
    betas = options.get("betas", (options.get("momentum", 0.9),) * 2)
    oracle = Oracle(family, betas, options.get("state_block", 256))
    flipped = 0
    for step in range(STEPS):
        grads = [[g.to(dev) for g in _grads([p.shape for p in ps], step, gen, dtype)] for ps in groups]
        for ps, gs in zip(groups, grads):
            for p, g in zip(ps, gs):
                p.grad = g
        want = [oracle.group(opt, g, gs) for g, gs in zip(opt.param_groups, grads)]
        opt.step()
        got = opt.step_stats()
        for w, s in zip(want, got):
            assert s["numel"] == w["numel"] and s["nonfinite"] == w["nonfinite"]
            assert s["sign_flip_fraction"] == w["sign_flip_fraction"]
            assert s["update_rms"] == pytest.approx(w["update_rms"], rel=1e-5)
            assert s["state_absmax"].keys() == w["state_absmax"].keys()
            for k in w["state_absmax"]:
                assert s["state_absmax"][k] == pytest.approx(w["state_absmax"][k], rel=1e-5)
            flipped += s["sign_flip_fraction"] > 0
        assert got[0]["nonfinite"] == (4 if step in (1, 2) else 0)  # a NaN and an inf per tensor
    assert flipped > 0  # the case reversed some signs


@pytest.mark.parametrize("backend, device", TARGETS)
def test_absmax_propagates_inf_and_nan(backend, device):
    """A state that holds inf or NaN shows in its absmax (as torch.amax of |m| would)."""
    dev = _device(backend, device)
    p = torch.zeros(10, device=dev)
    opt = signopt.Lion([p], lr=0.1, betas=(0.0, 0.0), backend=backend, step_stats=True)
    p.grad = torch.full((10,), 3e38, device=dev)
    p.grad[3] = -3.4e38
    opt.step()
    assert opt.step_stats()[0]["state_absmax"]["m"] == pytest.approx(3.4e38, rel=1e-6)
    opt.param_groups[0]["betas"] = (0.9, 0.9)
    opt.state[p]["m"][0] = float("inf")  # in place: the kept plan runs on
    opt.step()
    assert opt.step_stats()[0]["state_absmax"]["m"] == math.inf
    opt.state[p]["m"][1] = float("nan")
    opt.step()
    assert math.isnan(opt.step_stats()[0]["state_absmax"]["m"])


# ------------------------------------------------------------------------------ across backends
CROSS = {
    "lion_l2sq_cautious": (signopt.LionKappa, dict(kappa="l2sq", cautious=True, weight_decay=0.3)),
    "lion_huber_l2": (signopt.LionKappa, dict(kappa="huber", huber_delta=0.05, weight_decay=0.2, wd_mode="l2")),
    "lion_l2": (signopt.LionKappa, dict(kappa="l2", maximize=True)),
    "lion_row_l2_fp8": (signopt.LionKappa, dict(kappa="row_l2", state_dtype="fp8_e4m3", state_block=32,
                                                fp8_min_numel=0)),
    "lion_lp": (signopt.LionKappa, dict(kappa="lp", p=1.5, weight_decay=0.1)),
    "lion_bf16_sr": (signopt.Lion, dict(state_dtype="bf16", state_rounding="stochastic",
                                        param_rounding="stochastic", weight_decay=0.1, wd_mode="independent")),
    "sto_momentum_elem_fp8": (signopt.StoSignSGD, dict(state_dtype="fp8_e5m2", state_block=16, fp8_min_numel=0)),
    # an FP8 block that is no power of two (CUDA: staged in shared memory, not in registers)
    "lion_fp8_block48": (signopt.Lion, dict(state_dtype="fp8_e4m3", state_block=48, fp8_min_numel=0,
                                            weight_decay=0.1)),
    "sto_adamw_row": (signopt.SignConversion, dict(base="adamw", envelope="row", weight_decay=0.1)),
    "sto_sgd_tensor_grad": (signopt.SignConversion, dict(base="sgd", envelope="tensor", envelope_source="grad")),
    "sto_lion_block": (signopt.SignConversion, dict(base="lion", envelope="block", envelope_block=9,
                                                    envelope_decay=0.9, cautious=True)),
    "signum_fp16": (signopt.Signum, dict(weight_decay=0.1)),
}
EXACT_UPDATE = {"lion_l2sq_cautious", "lion_huber_l2", "lion_bf16_sr", "sto_momentum_elem_fp8", "lion_fp8_block48",
                "sto_sgd_tensor_grad", "sto_lion_block", "signum_fp16"}


def _run(cls, options, backend, dtype, contiguous=True, device=torch.device("cpu")):
    gen = torch.Generator().manual_seed(2)
    params = [torch.randn(s, generator=gen).to(device, dtype) for s in ((9, 33), (517,), (5,))]
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.003}], lr=0.01, backend=backend,
              step_stats=True, seed=3, **options)
    out = []
    for step in range(STEPS):
        for p, g in zip(params, _grads([p.shape for p in params], step, gen, dtype)):
            g = g.to(device)
            p.grad = g if contiguous or g.dim() < 2 else g.t().contiguous().t()
        opt.step()
        out.append(opt.step_stats())
    return out, params


@pytest.mark.parametrize("backend, device", [t for t in TARGETS if t.values[0] != "torch"])
@pytest.mark.parametrize("case", CROSS)
def test_backends_agree(case, backend, device):
    """Against the torch reference (CPU): counts and maxima equal, the fp64 update sums equal to
    their summation order (sqrt/pow rules: within the reference's 2-ulp class); the parameters
    themselves equal as always."""
    dev = _device(backend, device)
    cls, options = CROSS[case]
    dtype = torch.float16 if case.endswith("fp16") else torch.float32
    ref, _ = _run(cls, options, "torch", dtype)
    for contiguous in (True, False):  # the held C++ step (cpp) and the prepared call
        got, _ = _run(cls, options, backend, dtype, contiguous, dev)
        rel = 1e-12 if case in EXACT_UPDATE else 1e-5
        for r_step, g_step in zip(ref, got):
            for r, g in zip(r_step, g_step):
                assert (g["numel"], g["nonfinite"]) == (r["numel"], r["nonfinite"])
                if case in EXACT_UPDATE:
                    assert g["sign_flip_fraction"] == r["sign_flip_fraction"]
                    assert g["state_absmax"] == r["state_absmax"]
                else:
                    assert g["sign_flip_fraction"] == pytest.approx(r["sign_flip_fraction"], abs=0.01)
                    assert g["state_absmax"] == pytest.approx(r["state_absmax"], rel=1e-6)
                assert g["update_rms"] == pytest.approx(r["update_rms"], rel=rel)


@pytest.mark.parametrize("backend, device", TARGETS)
def test_stats_change_nothing(backend, device):
    """The step with statistics writes the same parameters and state as without."""
    dev = _device(backend, device)
    cls, options = CROSS["sto_lion_block"]
    _, with_stats = _run(cls, options, backend, torch.float32, device=dev)
    gen = torch.Generator().manual_seed(2)
    params = [torch.randn(s, generator=gen).to(dev) for s in ((9, 33), (517,), (5,))]
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.003}], lr=0.01, backend=backend,
              seed=3, **options)
    for step in range(STEPS):
        for p, g in zip(params, _grads([p.shape for p in params], step, gen, torch.float32)):
            p.grad = g.to(dev)
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, with_stats))


@pytest.mark.parametrize("backend, device", TARGETS)
def test_mixed_dtypes_in_one_group(backend, device):
    """A group of fp32 and bf16 parameters (two kernel calls) reports one set of statistics."""
    dev = _device(backend, device)
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(100, generator=gen).to(dev), torch.randn(50, generator=gen).to(dev, torch.bfloat16)
    opt = signopt.Lion([a, b], lr=0.1, backend=backend, step_stats=True)
    oracle = Oracle("lion", (0.9, 0.99), 256)
    a.grad, b.grad = torch.randn(100, generator=gen).to(dev), torch.randn(50, generator=gen).to(dev, torch.bfloat16)
    want = oracle.group(opt, opt.param_groups[0], [a.grad, b.grad])
    opt.step()
    got = opt.step_stats()[0]
    assert got["numel"] == 150 and got["update_rms"] == pytest.approx(want["update_rms"], rel=1e-6)


@pytest.mark.parametrize("backend, device", TARGETS)
def test_grad_scaler_skip(backend, device):
    """A step a GradScaler skips changes nothing: no update, no reversal, the non-finite count,
    NaN state maxima (not read); the signs it would have written are not kept."""
    dev = _device(backend, device)
    p = torch.ones(40, device=dev)
    opt = signopt.Lion([p], lr=0.1, backend=backend, step_stats=True)
    p.grad = torch.ones(40, device=dev)
    opt.step()
    p.grad = -torch.ones(40, device=dev)
    p.grad[0] = float("nan")
    opt.grad_scale, opt.found_inf = torch.ones((), device=dev), torch.ones((), device=dev)
    opt.step()
    s = opt.step_stats()[0]
    assert (s["update_rms"], s["sign_flip_fraction"], s["nonfinite"]) == (0.0, 0.0, 1)
    assert math.isnan(s["state_absmax"]["m"])
    opt.found_inf = torch.zeros((), device=dev)
    opt.step()
    assert opt.step_stats()[0]["sign_flip_fraction"] == 39 / 40  # against the first step's signs


# ------------------------------------------------------------------------------ the option
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_option_names_it(value):
    p = torch.zeros(3)
    with pytest.raises(ValueError, match="step_stats must be True or False"):
        signopt.Lion([p], step_stats=value)


def test_off_by_default():
    p = torch.zeros(3)
    opt = signopt.Lion([p])
    p.grad = torch.ones(3)
    opt.step()
    with pytest.raises(RuntimeError, match="step_stats=True"):
        opt.step_stats()


def test_before_a_step_and_without_gradients():
    a, b = torch.zeros(3), torch.zeros(4)
    opt = signopt.Signum([{"params": [a]}, {"params": [b]}], step_stats=True)
    assert opt.step_stats() == [None, None]
    a.grad = torch.ones(3)
    opt.step()
    stats = opt.step_stats()
    assert stats[1] is None and stats[0]["numel"] == 3 and stats[0]["sign_flip_fraction"] == 0.0


def test_backend_without_statistics_is_named(monkeypatch):
    """A backend that cannot compute them is refused at construction, naming it and why; the cpp
    backend refuses a group whose parameters lie on several devices (one buffer per group)."""
    torch_backend = backend_registry.load("torch")
    monkeypatch.setattr(torch_backend, "stats_unsupported", lambda params: "no reason", raising=False)
    with pytest.raises(ValueError, match=r"step_stats=True: backend 'torch' cannot .*\(no reason\)"):
        signopt.Lion([torch.zeros(4)], backend="torch", step_stats=True)
    if "cpp" in BACKENDS:
        cpp = backend_registry.load("cpp")
        assert cpp.stats_unsupported([torch.empty(2), torch.empty(3)]) is None
        reason = cpp.stats_unsupported([torch.empty(2), torch.empty(2, device="meta")])
        assert "2 devices (cpu, meta)" in reason


def test_checkpoint_round_trip_keeps_no_signs():
    """The signs are telemetry, not training state: state dicts do not hold them, and after a
    load the next step compares against no previous sign."""
    p = torch.ones(8)
    opt = signopt.Lion([p], lr=0.1, step_stats=True)
    p.grad = torch.ones(8)
    opt.step()
    sd = opt.state_dict()
    q = torch.ones(8)
    plain = signopt.Lion([q], lr=0.1)
    q.grad = torch.ones(8)
    plain.step()
    assert set(sd["state"][0]) == set(plain.state_dict()["state"][0])
    opt.load_state_dict(sd)
    p.grad = -torch.ones(8) * 100
    opt.step()
    assert opt.step_stats()[0]["sign_flip_fraction"] == 0.0

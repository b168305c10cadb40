"""The 1-bit sign-compression DDP hook on real gloo process groups against a single-process
replay of its math, the EF invariant, checkpoint resume, and a crashing rank."""
from __future__ import annotations

import os
import time

import pytest
import torch
from torch import nn

import harness
import scenarios as S
from signopt.distributed import SignCompressionState
from signopt.distributed.packing import pack_bits, unpack_bits


def _scale(v: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Per-segment ||v||_1/d (fp64 sum, rounded once), one value per element."""
    return torch.cat([(seg.abs().sum(dtype=torch.float64) / seg.numel()).to(v.dtype).expand(seg.numel())
                      for seg in v.split(sizes)])


def _sim_ef(grads: list[torch.Tensor], errors: list[torch.Tensor], sizes: list[int]):
    """EF-SignSGD written out from the formula (independent of signopt.distributed)."""
    deltas, new_errors = [], []
    for g, e in zip(grads, errors):
        q = g + e
        delta = _scale(q, sizes) * torch.where(q >= 0, 1.0, -1.0).to(q.dtype)
        deltas.append(delta)
        new_errors.append(q - delta)
    acc = deltas[0]
    for d in deltas[1:]:
        acc = acc + d
    return acc / len(grads), new_errors


def _sim_vote(grads: list[torch.Tensor], momenta: list[torch.Tensor], beta: float, sizes: list[int]):
    signs, scales, new_m = [], [], []
    for w, (g, m) in enumerate(zip(grads, momenta)):
        m = m * beta + g * (1.0 - beta) if beta else g
        alt = torch.where((torch.arange(m.numel()) + w) % 2 == 0, 1.0, -1.0)
        signs.append(torch.where(m == 0, alt, torch.sign(m)))
        scales.append(_scale(m, sizes))
        new_m.append(m)
    votes, total = signs[0], scales[0]
    for s, c in zip(signs[1:], scales[1:]):
        votes, total = votes + s, total + c
    return torch.sign(votes) * (total / len(grads)), new_m


def _replay(mode: str, world: int, steps: int, beta: float = 0.0, dtype=torch.float32,
            granularity: str = "bucket"):
    """Single process: every rank's gradient at the shared parameters, the hook's math, SGD
    (one DDP bucket holding every parameter)."""
    model = S.make_mlp(dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=S.LR)
    n = sum(p.numel() for p in model.parameters())
    sizes = [n] if granularity == "bucket" else [p.numel() for p in model.parameters()]
    buffers = [torch.zeros(n, dtype=dtype) for _ in range(world)]
    for t in range(steps):
        probe = S.make_mlp(dtype=dtype)
        probe.load_state_dict(model.state_dict())
        grads = [S.flat(S.local_grads(probe, w, t)) for w in range(world)]
        if mode == "error_feedback":
            out, buffers = _sim_ef(grads, buffers, sizes)
        else:
            out, buffers = _sim_vote(grads, buffers, beta, sizes)
        for p, g in zip(model.parameters(), out.split([p.numel() for p in model.parameters()])):
            p.grad = g.reshape(p.shape).clone()
        opt.step()
    return S.flat(model.parameters()), buffers


STEPS = 6
RUNS_2 = [
    ["ddp_trajectory", {"mode": "error_feedback", "steps": STEPS}],
    ["ddp_trajectory", {"mode": "error_feedback", "steps": STEPS, "dtype": "float64",
                        "granularity": "tensor"}],
    ["ddp_trajectory", {"mode": "majority_vote", "momentum": 0.5, "steps": STEPS,
                        "granularity": "tensor"}],
    ["ddp_resume", {"mode": "error_feedback", "optimizer": "lion"}],
    ["ddp_resume", {"mode": "error_feedback", "optimizer": "sgd_momentum"}],
    ["ddp_resume", {"mode": "majority_vote", "optimizer": "lion", "momentum": 0.9}],
    ["ddp_resume", {"mode": "error_feedback", "optimizer": "lion", "granularity": "bucket"}],
]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return harness.run("suite", 2, tmp_path_factory.mktemp("ddp2"), timeout=150, runs=RUNS_2)


def _by_run(results, i):
    return [r[i] for r in results]


def test_pack_roundtrip():
    for d in (1, 7, 8, 9, 1000):
        bits = torch.rand(d, generator=torch.Generator().manual_seed(d)) < 0.5
        packed = pack_bits(bits)
        assert packed.dtype == torch.uint8 and packed.numel() == -(-d // 8)
        assert torch.equal(unpack_bits(packed, d), bits)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_payload_roundtrip_any_world_size(world, dtype):
    """encode -> gather (a concatenation) -> decode gives every rank's scales and bits back,
    also for one rank (a single-process DDP run)."""
    from signopt.distributed.compression import decode, encode
    gen = torch.Generator().manual_seed(world)
    numel, n_scales = 13, 3
    scales = [torch.rand(n_scales, generator=gen).to(dtype) for _ in range(world)]
    bits = [torch.rand(numel, generator=gen) < 0.5 for _ in range(world)]
    gathered = torch.cat([encode(s, b) for s, b in zip(scales, bits)])
    got_scales, got_bits = decode(gathered, world, numel, n_scales, dtype)
    assert torch.equal(got_scales, torch.stack(scales)) and torch.equal(got_bits, torch.stack(bits))


@pytest.mark.parametrize("run", [0, 1])
def test_error_feedback_matches_replay(two_ranks, run):
    ranks = _by_run(two_ranks, run)
    dtype, granularity = (torch.float32, "bucket") if run == 0 else (torch.float64, "tensor")
    x, errors = _replay("error_feedback", 2, STEPS, dtype=dtype, granularity=granularity)
    for w, r in enumerate(ranks):
        assert torch.equal(r["x"][-1], x), "DDP + hook differs from the replayed math"
        assert torch.equal(r["e"][-1], errors[w])
    assert ranks[0]["iter"] == STEPS


def test_majority_vote_matches_replay(two_ranks):
    ranks = _by_run(two_ranks, 2)
    x, _ = _replay("majority_vote", 2, STEPS, beta=0.5, granularity="tensor")
    for r in ranks:
        assert torch.equal(r["x"][-1], x)


@pytest.mark.parametrize("run", [0, 1])
def test_error_feedback_invariant(two_ranks, run):
    """x_t - lr*mean(e_t) follows plain SGD on the mean gradient: exact in real arithmetic,
    within a few ulps of |x| per step in floating point (fp32 and fp64 alike)."""
    ranks = _by_run(two_ranks, run)
    x = ranks[0]["x"].double()
    e = torch.stack([r["e"] for r in ranks]).double().mean(0)
    g = torch.stack([r["g"] for r in ranks]).double().mean(0)
    shadow = x - S.LR * e
    residual = shadow[1:] - (shadow[:-1] - S.LR * g)
    eps = torch.finfo(torch.float32 if run == 0 else torch.float64).eps
    assert residual.abs().max() <= 4 * eps * x.abs().max()
    assert (shadow[-1] - (shadow[0] - S.LR * g.sum(0))).abs().max() <= 4 * STEPS * eps * x.abs().max()
    assert e[-1].abs().max() > 0  # the error is really carried


def test_bytes_sent_is_one_bit_per_element(two_ranks):
    r = _by_run(two_ranks, 0)[0]
    n = r["x"].shape[1]
    assert r["bytes_sent"] == STEPS * (4 + -(-n // 8))  # one bucket, 2 ranks: 1 payload each


@pytest.mark.parametrize("run", [3, 4, 5, 6])
def test_resume_restores_hook_buffers(two_ranks, run):
    ranks = _by_run(two_ranks, run)
    for r in ranks:
        assert torch.equal(r["resumed"], r["straight"])
        assert not torch.equal(r["forgot"], r["straight"])  # the buffers matter
        assert r["keys"] and all(k.split(".")[0] in ("0", "2") for k in r["keys"])
    assert torch.equal(ranks[0]["straight"], ranks[1]["straight"])


def test_three_ranks_vote_ef_and_nonfinite(tmp_path):
    runs = [["ddp_trajectory", {"mode": "majority_vote", "steps": 3}],
            ["ddp_trajectory", {"mode": "error_feedback", "steps": 3}],
            ["ddp_nonfinite", {"mode": "error_feedback"}],
            ["ddp_nonfinite", {"mode": "majority_vote"}]]
    res = harness.run("suite", 3, tmp_path, timeout=150, runs=runs)
    x_vote, _ = _replay("majority_vote", 3, 3)
    x_ef, _ = _replay("error_feedback", 3, 3)
    for r in res:
        assert torch.equal(r[0]["x"][-1], x_vote)
        assert torch.equal(r[1]["x"][-1], x_ef)
        for nonfinite in r[2:]:  # one rank's inf reaches every rank; nobody's buffer moves
            assert not nonfinite["finite"] and nonfinite["kept"]


def test_crashing_rank_fails_fast_and_leaves_nothing(tmp_path):
    start = time.monotonic()
    with pytest.raises(harness.WorkerFailed, match="crashes on purpose"):
        harness.run("ddp_crash", 2, tmp_path, timeout=120)
    assert time.monotonic() - start < 60
    for pid in harness.LAST_PIDS:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_state_validation():
    model = S.make_mlp()
    with pytest.raises(ValueError, match="mode"):
        SignCompressionState(None, model, mode="topk")
    with pytest.raises(ValueError, match="momentum"):
        SignCompressionState(None, model, mode="majority_vote", momentum=1.0)
    with pytest.raises(ValueError, match="momentum"):
        SignCompressionState(None, model, mode="error_feedback", momentum=0.5)
    with pytest.raises(ValueError, match="granularity"):
        SignCompressionState(None, model, granularity="row")
    with pytest.raises(ValueError, match="module"):
        SignCompressionState(None, [nn.Parameter(torch.zeros(1))])

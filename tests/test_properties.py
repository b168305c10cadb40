"""Hypothesis property tests for the optimizers' invariants (``docs/numerics.md``, ``docs/optimizers.md``).

Comparisons are exact where the numerics contract says so (dyadic params and lr make ``p +- lr`` exact),
use fp64 oracles elsewhere, and only assert a sign where the fp64 value is clearly away from 0.
Statistical tests use few coordinates x many draws in one tensor op, with a 6-sigma bound that
holds over every coordinate tested together (Bonferroni).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, strategies as st
from torch import Tensor

import signopt
from signopt.casting import fp32_to_bf16_nearest
from signopt.declaration import RANDOM_PURPOSES
from signopt.philox import derive_key, element_word, philox4x32_ints, triton_seed, uniform_from_word

N = 24  # coordinates per property example
LR = 2.0 ** -10  # dyadic: p +- lr is exact for dyadic p of moderate size


def _flush_subnormal(x: float) -> float:
    # (1 - beta)*g underflows to 0 for subnormal g; the invariants of docs/numerics.md are about normal values
    return 0.0 if abs(x) < 2.0 ** -100 else x


def vec(min_value: float = -100.0, max_value: float = 100.0, n: int = N) -> st.SearchStrategy:
    """A list of ``n`` finite fp32 values (zeros, tiny and signed values included; subnormals
    and values below 2**-100 become 0)."""
    x = st.floats(min_value, max_value, allow_nan=False, allow_infinity=False, width=32)
    return st.lists(x.map(_flush_subnormal), min_size=n, max_size=n)


grads_seq = st.lists(vec(), min_size=1, max_size=5)
dyadic = st.lists(st.integers(-512, 512), min_size=N, max_size=N).map(
    lambda ks: torch.tensor(ks, dtype=torch.float32) / 64.0)
beta = st.sampled_from([0.0, 0.5, 0.9, 0.99, 0.999])


def t32(x: list[float]) -> Tensor:
    return torch.tensor(x, dtype=torch.float32)


def steps(opt: torch.optim.Optimizer, p: Tensor, grads: list[list[float]]) -> list[Tensor]:
    """Run ``opt`` over ``grads``; return p after each step."""
    out = []
    for g in grads:
        p.grad = t32(g)
        opt.step()
        out.append(p.detach().clone())
    return out


def leaf(x: Tensor) -> Tensor:
    return x.detach().clone().requires_grad_()


# ------------------------------------------------------------------ exact +-lr
@given(p0=dyadic, grads=grads_seq)
def test_signsgd_and_signum_steps_are_exactly_lr(p0: Tensor, grads: list) -> None:
    for cls, kw in ((signopt.SignSGD, {}), (signopt.Signum, {"momentum": 0.9})):
        p = leaf(p0)
        opt = cls([p], lr=LR, **kw)
        prev = p0
        for g in grads:
            p.grad = t32(g)
            opt.step()
            signed = opt.state[p]["m"] if cls is signopt.Signum else p.grad
            delta = p.detach() - prev
            assert torch.equal(delta, -LR * torch.sign(signed))
            prev = p.detach().clone()


@given(p0=dyadic, grads=grads_seq, b1=beta, b2=beta)
def test_lion_steps_are_exactly_lr_with_the_sign_of_c(p0: Tensor, grads: list, b1: float, b2: float) -> None:
    """|dp| is lr or 0; where the fp64 c is clearly nonzero dp = -lr*sign(c)."""
    p = leaf(p0)
    opt = signopt.Lion([p], lr=LR, betas=(b1, b2))
    m64 = torch.zeros(N, dtype=torch.float64)
    prev = p0
    for g in grads:
        g64 = t32(g).double()
        c64 = b1 * m64 + (1 - b1) * g64
        p.grad = t32(g)
        opt.step()
        delta = p.detach() - prev
        assert ((delta.abs() == LR) | (delta == 0)).all()
        clear = c64.abs() > 1e-4 * (g64.abs() + m64.abs()).clamp_min(1e-30)
        assert torch.equal(delta[clear], (-LR * torch.sign(c64[clear])).float())
        m64 = b2 * m64 + (1 - b2) * g64
        prev = p.detach().clone()


@given(p0=vec(), g=vec(), lr=st.sampled_from([1e-4, 3e-3, 0.1]))
def test_lion_first_step_is_minus_lr_sign_g(p0: list, g: list, lr: float) -> None:
    p = leaf(t32(p0))
    opt = signopt.Lion([p], lr=lr)
    p.grad = t32(g)
    opt.step()
    assert torch.equal(p.detach(), t32(p0) - torch.tensor(lr, dtype=torch.float32) * torch.sign(t32(g)))


# -------------------------------------------------------------- beta reductions
@given(p0=vec(), grads=grads_seq, b=beta)
def test_lion_with_equal_betas_is_signum(p0: list, grads: list, b: float) -> None:
    a, c = leaf(t32(p0)), leaf(t32(p0))
    pa = steps(signopt.Lion([a], lr=1e-3, betas=(b, b)), a, grads)
    pc = steps(signopt.Signum([c], lr=1e-3, momentum=b), c, grads)
    for x, y in zip(pa, pc):
        assert torch.equal(x, y)


@given(p0=vec(), grads=grads_seq, b2=beta)
def test_lion_with_beta1_zero_is_signsgd(p0: list, grads: list, b2: float) -> None:
    a, c = leaf(t32(p0)), leaf(t32(p0))
    pa = steps(signopt.Lion([a], lr=1e-3, betas=(0.0, b2)), a, grads)
    pc = steps(signopt.SignSGD([c], lr=1e-3), c, grads)
    for x, y in zip(pa, pc):
        assert torch.equal(x, y)


# ------------------------------------------------------------- kappa reductions
@given(p0=vec(), grads=grads_seq, b1=beta, b2=beta, wd=st.sampled_from([0.0, 0.3]),
       mode=st.sampled_from(["decoupled", "independent", "l2"]))
def test_kappa_l1_is_lion_bitwise(p0: list, grads: list, b1: float, b2: float, wd: float, mode: str) -> None:
    a, c = leaf(t32(p0)), leaf(t32(p0))
    kw = dict(lr=1e-3, betas=(b1, b2), weight_decay=wd, wd_mode=mode)
    pa = steps(signopt.LionKappa([a], kappa="l1", **kw), a, grads)
    pc = steps(signopt.Lion([c], **kw), c, grads)
    for x, y in zip(pa, pc):
        assert torch.equal(x, y)


@given(p0=vec(-1, 1), grads=grads_seq, b=st.sampled_from([0.5, 0.9, 0.99]))
def test_kappa_l2sq_with_equal_betas_is_ema_momentum_sgd(p0: list, grads: list, b: float) -> None:
    """p <- p - lr*m_t with m_t = b*m + (1-b)*g, m0 = 0 (fp64 oracle); torch SGD(momentum=b,
    dampening=b) matches once its buffer starts at 0 (it starts at the raw g by default)."""
    lr = 1e-2
    p = leaf(t32(p0))
    q = leaf(t32(p0))
    ours = steps(signopt.LionKappa([p], lr=lr, betas=(b, b), kappa="l2sq"), p, grads)
    sgd = torch.optim.SGD([q], lr=lr, momentum=b, dampening=b)
    sgd.state[q]["momentum_buffer"] = torch.zeros(N)
    theirs = steps(sgd, q, grads)
    p64, m64 = t32(p0).double(), torch.zeros(N, dtype=torch.float64)
    scale = 1.0
    for g, x, y in zip(grads, ours, theirs):
        g64 = t32(g).double()
        scale = max(scale, float(g64.abs().max()))
        m64 = b * m64 + (1 - b) * g64
        p64 = p64 - lr * m64
        tol = 1e-6 * (1 + lr * scale)
        assert torch.allclose(x.double(), p64, rtol=1e-6, atol=tol)
        assert torch.allclose(y.double(), p64, rtol=1e-6, atol=tol)


# ----------------------------------------------------------------- invariant sets
@given(wd=st.floats(0.1, 10.0), frac=st.floats(1e-3, 1.0), u=vec(-1, 1), grads=grads_seq,
       b1=beta, b2=beta)
def test_lion_box_invariance(wd: float, frac: float, u: list, grads: list, b1: float, b2: float) -> None:
    """lr*wd <= 1 and ||p0||_inf <= 1/wd  =>  ||p_t||_inf <= 1/wd (up to fp32 rounding)."""
    lr = frac / wd
    radius = 1.0 / wd
    p = leaf((t32(u) * radius).clamp(-radius, radius))  # clamp: the fp32 product may round up
    traj = steps(signopt.Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd), p, grads * 3)
    for x in traj:
        assert float(x.abs().max()) <= radius * (1 + 4 * 2.0 ** -24)


def _ball_norm(kappa: str, x: Tensor, pk: float) -> Tensor:
    """The dual norm whose ball of radius 1/wd Lion-kappa keeps invariant."""
    x = x.double()
    if kappa == "l2":
        return x.norm()
    if kappa == "row_l2":
        return x.reshape(x.shape[0], -1).norm(dim=1).max()
    if kappa == "lp":
        q = pk / (pk - 1.0)
        return x.abs().pow(q).sum().pow(1.0 / q)
    return x.abs().max()  # huber: grad in [-1, 1] -> box


@pytest.mark.parametrize("kappa", ["l2", "row_l2", "lp", "huber"])
@given(wd=st.floats(0.1, 10.0), frac=st.floats(1e-3, 1.0), u=vec(-1, 1), grads=grads_seq,
       shrink=st.floats(0.0, 1.0))
def test_kappa_dual_ball_invariance(kappa: str, wd: float, frac: float, u: list, grads: list,
                                    shrink: float) -> None:
    pk = 3.0
    lr, radius = frac / wd, 1.0 / wd
    x0 = t32(u).reshape(4, 6)
    n0 = float(_ball_norm(kappa, x0, pk))
    if n0 == 0:
        return
    p = leaf(x0 * (shrink * radius / n0))
    opt = signopt.LionKappa([p], lr=lr, weight_decay=wd, kappa=kappa, p=pk, huber_delta=0.5)
    for g in grads * 3:
        p.grad = t32(g).reshape(4, 6)
        opt.step()
        assert float(_ball_norm(kappa, p.detach(), pk)) <= radius * (1 + 1e-5)


# ------------------------------------------------------------ stochastic sign
def _sto_state_step(v: Tensor, G: Tensor, draws: int, seed: int = 5) -> Tensor:
    """Mean of S_G(v) over ``draws`` independent coordinates, through StoSignSGD's own step.

    Each coordinate j is replicated ``draws`` times in one parameter; its state is set to
    m = v_j/beta, G = G_j and the gradient to 0, so the step's direction is m = v_j, envelope
    max(G_j, |v_j|) and -dp/lr = S_G(v). Returns the mean per coordinate.
    """
    n = v.numel()
    beta = 0.5
    p = torch.zeros(n * draws, requires_grad=True)
    opt = signopt.StoSignSGD([p], lr=1.0, beta=beta, seed=seed)
    p.grad = torch.zeros_like(p)
    opt.step()  # creates state (all zero, p stays 0: v = G = 0 gives 0)
    assert not p.detach().any()
    opt.state[p]["m"].copy_((v / beta).repeat(draws))
    opt.state[p]["G"].copy_(G.repeat(draws))
    opt.step()
    return (-p.detach()).reshape(draws, n).double().mean(dim=0)


def test_stochastic_sign_is_unbiased() -> None:
    """E[S_G(v)] = v/G for every coordinate (6-sigma bound holding over all coordinates)."""
    v = torch.tensor([0.0, 0.1, -0.1, 0.5, -0.5, 0.9, -0.99, 1.0, -1.0, 0.25, 3e-3, -0.75])
    G = torch.ones_like(v)
    G[9] = 0.5  # v/G = 0.5
    draws = 40_000
    mean = _sto_state_step(v, G, draws)
    r = (v / G).double()
    sd = (1 - r * r).clamp_min(0).sqrt()
    bound = 6 * sd / math.sqrt(draws) + 1e-12
    assert ((mean - r).abs() <= bound).all(), (mean - r, bound)
    # pooled: sum of squared z-scores ~ chi2(k); k + 10*sqrt(2k) is a loose upper bound
    inner = sd > 0
    z2 = (((mean - r)[inner] / sd[inner]) ** 2 * draws).sum()
    k = int(inner.sum())
    assert float(z2) <= k + 10 * math.sqrt(2 * k)


def test_stochastic_sign_is_biased_when_the_bound_is_violated_only_by_clipping() -> None:
    """With |v| > G the expectation saturates at sign(v) (clip(v/G, -1, 1))."""
    v = torch.tensor([2.0, -3.0])
    G = torch.ones(2)
    mean = _sto_state_step(v, G, 2000)
    # the envelope is max(G, |v|) after the update, so the step is exactly sign(v)
    assert torch.equal(mean, torch.sign(v).double())


@given(grads=grads_seq, env=st.sampled_from(["element", "row", "block", "tensor"]),
       source=st.sampled_from(["direction", "grad"]), decay=st.sampled_from([1.0, 0.9]))
def test_envelope_bounds_and_monotone(grads: list, env: str, source: str, decay: float) -> None:
    """G >= |m| (|g| for source='grad') per cell; with decay 1, G never decreases."""
    p = torch.zeros(4, 6, requires_grad=True)
    opt = signopt.StoSignSGD([p], lr=LR, beta=0.9, seed=1, envelope=env, envelope_source=source,
                             envelope_decay=decay, envelope_block=5)
    rule = opt.rule(0)
    from signopt.reference import expand_envelope

    prev = None
    for g in grads:
        p.grad = t32(g).reshape(4, 6)
        opt.step()
        G = opt.state[p]["G"].float()
        src = opt.state[p]["m"].abs() if source == "direction" else p.grad.abs()
        assert (expand_envelope(rule, G, p.shape) >= src).all()
        if prev is not None and decay == 1.0:
            assert (G >= prev).all()
        prev = G.clone()


@given(p0=dyadic, grads=grads_seq, seed=st.integers(0, 2**64 - 1),
       base=st.sampled_from(["sgd", "momentum", "adamw", "lion"]))
def test_every_stochastic_step_is_exactly_lr(p0: Tensor, grads: list, seed: int, base: str) -> None:
    """wd=0: |dp| == lr exactly, except 0 where the direction and the envelope are both 0."""
    p = leaf(p0)
    opt = signopt.SignConversion([p], lr=LR, base=base, seed=seed)
    prev = p0
    zero_cols = torch.arange(N) % 5 == 0  # these coordinates never see a gradient
    for g in grads:
        g = t32(g)
        g[zero_cols] = 0.0
        p.grad = g
        opt.step()
        delta = p.detach() - prev
        G = opt.state[p]["G"].float()
        both_zero = G == 0
        assert (delta[both_zero] == 0).all()
        assert (delta[~both_zero].abs() == LR).all()
        assert both_zero[zero_cols].all()
        prev = p.detach().clone()


@given(grads=grads_seq, seed=st.integers(0, 2**63))
def test_determinism_by_seed(grads: list, seed: int) -> None:
    outs = []
    for s in (seed, seed, seed + 1):
        p = torch.zeros(64, requires_grad=True)
        opt = signopt.StoSignSGD([p], lr=LR, seed=s)
        for g in grads + [[0.5] * N]:
            p.grad = t32(g).repeat(3)[:64] if len(g) * 3 >= 64 else torch.zeros(64)
            opt.step()
        outs.append(p.detach().clone())
    assert torch.equal(outs[0], outs[1])


def test_different_seeds_differ() -> None:
    outs = []
    for s in (1, 2):
        p = torch.zeros(256, requires_grad=True)
        opt = signopt.StoSignSGD([p], lr=LR, seed=s)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            p.grad = torch.randn(256, generator=gen)
            opt.step()
        outs.append(p.detach().clone())
    assert not torch.equal(outs[0], outs[1])


@given(p0=vec(), g=vec(), b=beta, seed=st.integers(0, 2**64 - 1))
def test_stosignsgd_step_one_is_signum(p0: list, g: list, b: float, seed: int) -> None:
    a, c = leaf(t32(p0)), leaf(t32(p0))
    pa = steps(signopt.StoSignSGD([a], lr=1e-3, beta=b, seed=seed), a, [g])
    pc = steps(signopt.Signum([c], lr=1e-3, momentum=b), c, [g])
    assert torch.equal(pa[0], pc[0])


# ------------------------------------------------------------------- RNG, casts
_TRITON_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch, triton, triton.language as tl

    @triton.jit
    def words(c0_ptr, c1_ptr, c2_ptr, out_ptr, rint_ptr, seed, N: tl.constexpr):
        offs = tl.arange(0, N)
        c0 = tl.load(c0_ptr + offs)
        c1 = tl.load(c1_ptr + offs)
        c2 = tl.load(c2_ptr + offs)
        z = tl.zeros_like(c0)
        r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, z)
        tl.store(out_ptr + 4 * offs + 0, r0)
        tl.store(out_ptr + 4 * offs + 1, r1)
        tl.store(out_ptr + 4 * offs + 2, r2)
        tl.store(out_ptr + 4 * offs + 3, r3)
        tl.store(rint_ptr + offs, tl.randint(seed, c0.to(tl.int32, bitcast=True)))

    args = json.loads(sys.argv[1])
    idx = torch.tensor(args["idx"], dtype=torch.int64)
    c0 = (idx & 0xFFFFFFFF).to(torch.uint32)
    c1 = (idx >> 32).to(torch.uint32)
    c2 = torch.tensor(args["purpose"], dtype=torch.int64).to(torch.uint32)
    n = idx.numel()
    out = torch.zeros(4 * n, dtype=torch.uint32)
    rint = torch.zeros(n, dtype=torch.uint32)
    words[(1,)](c0, c1, c2, out, rint, args["seed"], N=n)
    print(json.dumps({"words": out.to(torch.int64).tolist(), "randint": rint.to(torch.int64).tolist()}))
""")


def test_philox_matches_triton_interpreter() -> None:
    """The torch Philox equals ``tl.philox`` on the counters of random bits v2 (``(j mod 2**32,
    j >> 32, purpose, 0)``: word ``w`` of call ``j`` is ``element_word`` of element ``4j + w``),
    large counters too, for every purpose; word 0 of purpose 0 equals ``tl.randint``."""
    pytest.importorskip("triton")
    key = derive_key(0x0123456789ABCDEF, 7, 3)
    seed = triton_seed(key)
    calls = list(range(12)) + [2**31 - 1, 2**31, 2**32 - 1, 2**32 + 5]
    purposes = sorted(RANDOM_PURPOSES.values())
    js = [j for _ in purposes for j in calls] + calls[:64 - len(purposes) * len(calls)]  # 64 in all
    ps = [p for p in purposes for _ in calls] + [0] * (64 - len(purposes) * len(calls))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT,
                           json.dumps({"idx": js, "purpose": ps, "seed": seed})],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    j = torch.tensor(js, dtype=torch.int64)
    ours = []
    for c in range(len(js)):
        ours += element_word(key, 4 * j[c] + torch.arange(4), ps[c]).tolist()
    assert got["words"] == ours
    small = [c for c in range(len(js)) if js[c] < 2**31 and ps[c] == 0]
    assert len(small) >= 12 and [got["randint"][c] for c in small] == [ours[4 * c] for c in small]
    # the scalar host version agrees with the tensor version
    for c in (13, len(calls) + 14, 2 * len(calls) + 15):
        assert list(philox4x32_ints(key[0], key[1], js[c] & 0xFFFFFFFF, js[c] >> 32, ps[c], 0)) == ours[4 * c:4 * c + 4]


@given(words=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_uniform_from_word_is_exact_and_in_range(words: list) -> None:
    u = uniform_from_word(torch.tensor(words, dtype=torch.int64))
    assert u.dtype == torch.float32
    assert ((u >= 0) & (u < 1)).all()
    assert u.double().tolist() == [(w >> 8) * 2.0 ** -24 for w in words]


@given(x=st.lists(st.floats(allow_nan=False, allow_infinity=True, width=32), min_size=1, max_size=64))
def test_bf16_rounding_helper_equals_torch_rne(x: list) -> None:  # subnormals included
    t = t32(x)
    ours = fp32_to_bf16_nearest(t)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours.view(torch.int16), t.to(torch.bfloat16).view(torch.int16))


def test_bf16_rounding_edge_cases() -> None:
    """Ties to even, carries into the exponent, overflow to inf, subnormals, signed zeros."""
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0x7F7F7FFF, 0x00000001,
                         0x80000000, 0x807FFFFF, 0xBF7FFFFF, 0x3F7F8000], dtype=torch.int64)
    t = bits.to(torch.int32).view(torch.float32)
    assert torch.equal(fp32_to_bf16_nearest(t).view(torch.int16), t.to(torch.bfloat16).view(torch.int16))
    assert torch.isnan(fp32_to_bf16_nearest(torch.tensor([float("nan")]))).all()

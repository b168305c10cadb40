"""Random bits v2: Philox4x32-10 against published known-answer vectors, the per-element word
layout (one call serves 4 consecutive elements per purpose), and statistics of what the
optimizers draw through it on every backend: stochastic signs and stochastic roundings are
unbiased and uncorrelated across neighbouring elements.

Statistical bounds: over ``n`` draws a mean of Bernoulli/sign variables with variance ``var`` has
standard deviation ``sqrt(var/n)``, and the lag-k sample correlation of independent draws has
standard deviation ``1/sqrt(n)``; every check allows 5 standard deviations (a false failure
about once in 1.7 million runs per check), and is deterministic for the fixed seeds used here.
"""
from __future__ import annotations

import math

import pytest
import torch

import signopt
from signopt import backends as backend_registry
from signopt.declaration import RANDOM_PURPOSES
from signopt.philox import MASK32, element_word, philox4x32, philox4x32_ints
from signopt.scalars import f32

# Random123's kat_vectors for philox4x32 with 10 rounds: (counter, key, output)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32, MASK32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
N = 1 << 20  # draws per statistic (>= 10**6)
SIGMAS = 5.0


@pytest.mark.parametrize("ctr,key,out", KAT)
def test_philox_known_answers(ctr, key, out):
    assert philox4x32_ints(*key, *ctr) == out
    words = philox4x32(*key, *(torch.tensor([c], dtype=torch.int64) for c in ctr))
    assert tuple(int(w) for w in words) == out


@pytest.mark.parametrize("purpose", sorted(RANDOM_PURPOSES.values()))
def test_word_layout_v2(purpose):
    """Element ``i`` takes word ``i & 3`` of the call on counter (j lo, j hi, purpose, 0),
    j = i >> 2, for scattered indices (across the 2**32 boundary of j) and for runs."""
    key = (0x1234ABCD, 0x0BADF00D)
    idx = torch.tensor([0, 1, 2, 3, 4, 7, 2**34 - 3, 2**34, 2**34 + 5, 2**40 + 2, 12345677], dtype=torch.int64)
    got = element_word(key, idx, purpose)
    for i, w in zip(idx.tolist(), got.tolist()):
        j = i >> 2
        assert w == philox4x32_ints(*key, j & MASK32, j >> 32, purpose, 0)[i & 3]
    for start in (0, 1, 2, 3, 2**34 - 5):
        run = torch.arange(start, start + 23, dtype=torch.int64)
        assert torch.equal(element_word(key, run, purpose), element_word(key, run[torch.randperm(23)].sort().values, purpose))
        scattered = element_word(key, run.flip(0), purpose).flip(0)  # not a run: the general path
        assert torch.equal(element_word(key, run, purpose), scattered)


def test_purposes_draw_independent_words():
    key = (5, 6)
    idx = torch.arange(4096, dtype=torch.int64)
    words = [element_word(key, idx, p) for p in sorted(RANDOM_PURPOSES.values())]
    for a in range(len(words)):
        for b in range(a + 1, len(words)):
            assert (words[a] == words[b]).float().mean() < 0.01


# ------------------------------------------------------------------ statistics through the optimizers
def _backends() -> list[str]:
    out = []
    for name in ("torch", "cpp", "triton"):
        try:
            backend_registry.load(name)
            out.append(name)
        except backend_registry.BackendUnavailable:
            pass
    return out


def _lag_correlations(x: torch.Tensor, lags=(1, 2, 3, 4)) -> list[float]:
    x = x.double() - x.double().mean()
    den = float((x * x).mean())
    return [float((x[:-k] * x[k:]).mean()) / den for k in lags]


def _check_unbiased_uncorrelated(x: torch.Tensor, mean: float, var: float, what: str) -> None:
    n = x.numel()
    got = float(x.double().mean())
    assert abs(got - mean) <= SIGMAS * math.sqrt(var / n), f"{what}: mean {got} vs {mean}"
    for k, r in zip((1, 2, 3, 4), _lag_correlations(x)):
        assert abs(r) <= SIGMAS / math.sqrt(n), f"{what}: lag-{k} correlation {r}"


@pytest.mark.parametrize("backend", _backends())
def test_stochastic_sign_statistics(backend):
    """SignConversion(base='sgd', envelope='tensor'): gradient 0.3 everywhere and 1 at one
    element gives G = 1 and d/G = 0.3, so each update is +-lr with P(+1) = 0.65:
    mean 0.3, variance 0.91."""
    g = torch.full((N + 1,), 0.3)
    g[-1] = 1.0
    p = torch.zeros(N + 1)
    opt = signopt.SignConversion([p], lr=1.0, base="sgd", envelope="tensor", seed=20261207, backend=backend)
    p.grad = g
    opt.step()
    u = -p[:-1]  # p = 0 - lr*u
    assert set(u.unique().tolist()) == {-1.0, 1.0}
    _check_unbiased_uncorrelated(u, 0.3, 1 - 0.3**2, f"stochastic sign on {backend}")


@pytest.mark.parametrize("backend", _backends())
def test_stochastic_parameter_rounding_statistics(backend):
    """A bf16 parameter at 1 moved by lr = 2**-10 lands between 1 - 2**-8 and 1: it rounds
    down with probability 1/4 (variance 3/16 of the indicator)."""
    p = torch.ones(N, dtype=torch.bfloat16)
    opt = signopt.SignSGD([p], lr=2.0**-10, param_rounding="stochastic", seed=7, backend=backend)
    p.grad = torch.ones_like(p)
    opt.step()
    assert set(p.float().unique().tolist()) <= {1.0, 1 - 2.0**-8}
    down = (p.float() < 1).float()
    _check_unbiased_uncorrelated(down, 0.25, 0.25 * 0.75, f"parameter rounding on {backend}")


@pytest.mark.parametrize("backend", _backends())
def test_stochastic_state_rounding_statistics(backend):
    """Lion with bf16 state: after one step m = 0.01*g in fp32, stored rounded to bf16 up or
    down with the probabilities that keep its mean; the indicator of rounding up has mean
    ``frac`` (its position between the two bf16 neighbours)."""
    g = torch.full((N,), 1.7)
    p = torch.zeros(N)
    opt = signopt.Lion([p], lr=1e-3, betas=(0.9, 0.99), state_dtype="bf16", state_rounding="stochastic",
                       seed=99, backend=backend)
    p.grad = g
    opt.step()
    exact = torch.tensor(1.7) * torch.tensor(f32(1 - 0.99))  # m = 0*b2 + g*(1-b2) in fp32
    bits = exact.view(torch.int32) & -65536  # the bf16 neighbours below and above
    lo_f, hi_f = bits.view(torch.float32), (bits + 65536).view(torch.float32)
    m = opt.state[p]["m"].float()
    assert set(m.unique().tolist()) <= {float(lo_f), float(hi_f)}
    frac = float((exact - lo_f) / (hi_f - lo_f))
    assert 0.05 < frac < 0.95
    up = (m == hi_f).float()
    _check_unbiased_uncorrelated(up, frac, frac * (1 - frac), f"state rounding on {backend}")

"""Advantage estimators, aggregations and KL estimators at non-default settings against values
computed in this file with plain Python arithmetic (no signopt.rl code)."""

import math
import statistics

import pytest
import torch

from signopt.rl.advantages import ADVANTAGES, compute_advantages
from signopt.rl.aggregation import AGGREGATIONS, aggregate
from signopt.rl.kl import KL_ESTIMATORS, kl_penalty

from oracle_case import sample_std

REWARDS = [0.9, 0.1, 0.4, 0.7, 0.0, 1.0, 0.35, 0.2, 0.6, 0.6, 0.15, 0.8, 0.3, 0.45, 0.55, 0.05]
G = 4


def groups(rewards, size=G):
    return [rewards[k : k + size] for k in range(0, len(rewards), size)]


def adv(name, rewards, size=G, **kw):
    return compute_advantages(name, torch.tensor(rewards, dtype=torch.float64), size, **kw).values.tolist()


def close(got, want, rel=1e-12):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a == pytest.approx(b, rel=rel, abs=1e-12)


def test_grpo():
    want = []
    for g in groups(REWARDS):
        m, s = sum(g) / G, sample_std(g)
        want += [(r - m) / (s + 1e-2) for r in g]
    close(adv("grpo", REWARDS, eps=1e-2), want)


def test_dr_grpo():
    close(adv("dr_grpo", REWARDS), [r - sum(g) / G for g in groups(REWARDS) for r in g])


def test_batch_std():
    s = sample_std(REWARDS)
    close(adv("batch_std", REWARDS, eps=1e-3), [(r - sum(g) / G) / (s + 1e-3) for g in groups(REWARDS) for r in g])


def test_rloo():
    close(adv("rloo", REWARDS), [r - (sum(g) - r) / (G - 1) for g in groups(REWARDS) for r in g])


def test_mc_grpo():
    rewards = [0.9, 0.1, 0.4, 0.7, 0.3, 0.0, 1.0, 0.35, 0.2, 0.6]  # groups of G + 1 = 5, distinct values
    res = compute_advantages("mc_grpo", torch.tensor(rewards, dtype=torch.float64), 5, eps=1e-2)
    want, keep = [], []
    for g in groups(rewards, 5):
        med = statistics.median(g)
        mad = statistics.median([abs(r - med) for r in g])
        a = [(r - med) / (mad + 1e-2) for r in g]
        nonzero = sum(v != 0 for v in a)
        want += [v * 5 / nonzero for v in a]
        keep += [r != med for r in g]
    close(res.values.tolist(), want)
    assert res.keep.tolist() == keep


def beta_pdf(p, a, b):
    return math.exp((a - 1) * math.log(p) + (b - 1) * math.log1p(-p)
                    - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)))


def test_bnpo_moments():
    rewards = [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0]
    p = [sum(g) / G for g in groups(rewards)]
    m = sum(p) / len(p)
    v = sum((x - m) ** 2 for x in p) / (len(p) - 1)  # unbiased, as BNPO's torch var()
    c = m * (1 - m) / v - 1
    alpha, beta = max(1 + m * c / 3, 1.0), max(1 + (1 - m) * c / 3, 1.0)
    assert alpha > 1 and beta > 1
    want = [(r - pq) * min(1 / beta_pdf(pq, alpha, beta), 1e6) for g, pq in zip(groups(rewards), p) for r in g]
    close(adv("bnpo", [float(r) for r in rewards]), want)


def test_dgpo_with_lengths():
    rewards = [1, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 1, 0]  # the third group is degenerate
    lengths = [3, 5, 2, 7, 4, 4, 6, 1, 9, 8, 2, 3, 5, 5, 2, 6]
    valid = [min(g) != max(g) for g in groups(rewards)]
    accs = [sum(g) / G for g in groups(rewards)]
    z = [math.exp(-a / 1.5) for a, ok in zip(accs, valid) if ok]
    weights = iter([sum(valid) * e / sum(z) for e in z])
    lens = groups(lengths)
    ratio = sum(lengths) / sum(sum(l) for l, ok in zip(lens, valid) if ok)
    want = []
    for g, ok in zip(groups(rewards), valid):
        if not ok:
            want += [0.0] * G
            continue
        m = sum(g) / G
        spread = sum(abs(r - m) for r in g)
        w = next(weights)
        want += [G * (r - m) / (spread + 1e-4) * w * ratio for r in g]
    close(adv("dgpo", [float(r) for r in rewards], temperature=1.5,
              lengths=torch.tensor(lengths)), want)


def test_opo():
    lengths = list(range(2, 18))
    want = []
    for g, l in zip(groups(REWARDS), groups(lengths)):
        base = sum(a * b for a, b in zip(g, l)) / sum(l)
        want += [r - base for r in g]
    close(adv("opo", REWARDS, lengths=torch.tensor(lengths)), want)


def quantile(xs, q):
    s = sorted(xs)
    pos = q * (len(s) - 1)
    k = math.floor(pos)
    return s[k] + (pos - k) * (s[min(k + 1, len(s) - 1)] - s[k])


def test_riskpo_bundles():
    rewards = REWARDS + [0.25, 0.65, 0.95, 0.5]  # 5 groups: bundles of 2, 2 and 1 question
    out = []
    bundles = [groups(rewards)[k : k + 2] for k in range(0, 5, 2)]
    for bundle in bundles:
        s = [sum(g[j] for g in bundle) for j in range(G)]
        qa, qb = quantile(s, 0.25), quantile(s, 0.75)
        a = [(min(max(v, qa), qb) - qb) / 0.5 + 0.3 * (min(v, qa) - qa) / 0.25 for v in s]
        sd = sample_std(a)
        a = [v / (sd + 1e-4) if sd > 0 else 0.0 for v in a]
        out += a * len(bundle)
    close(adv("riskpo", rewards, bundle_size=2, alpha=0.25, beta=0.75, cvar_weight=0.3), out)


def test_every_estimator_has_an_oracle_test():
    names = {n.removeprefix("test_").split("_with")[0].removesuffix("_moments").removesuffix("_bundles")
             for n in globals() if n.startswith("test_")}
    assert set(ADVANTAGES) <= names, sorted(set(ADVANTAGES) - names)


# ------------------------------------------------------------------ aggregation
LOSS = [[0.5, -1.0, 2.0, 0.25], [1.5, 3.0, -0.5, 7.0], [-2.0, 0.75, 1.0, 4.0]]
MASK = [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("step_wide", [False, True])
def test_aggregation(mode, step_wide):
    """Micro-batch normalisers (None) or step-wide ones that differ from this micro-batch's."""
    n_tok, n_seq, max_len = (17.0, 7.0, 9) if step_wide else (8.0, 3.0, 4)
    rows = [[l for l, m in zip(lr, mr) if m] for lr, mr in zip(LOSS, MASK)]
    total = sum(sum(r) for r in rows)
    want = {
        "token-mean": total / n_tok,
        "seq-mean-token-mean": sum(sum(r) / len(r) for r in rows) / n_seq,
        "seq-mean-token-sum": total / n_seq,
        "seq-mean-token-sum-norm": total / (n_seq * max_len),
    }[mode]
    kw = dict(num_tokens=n_tok, num_seqs=n_seq, max_len=max_len) if step_wide else {}
    got = aggregate(torch.tensor(LOSS, dtype=torch.float64), torch.tensor(MASK, dtype=torch.bool), mode, **kw)
    assert got.item() == pytest.approx(want, rel=1e-14)


# ------------------------------------------------------------------ KL estimators
D = [-25.0, -3.0, -0.5, 0.0, 0.4, 2.5, 3.5, 25.0]  # d = ref − logp


def kl_want(kind, d):
    if kind == "k1":
        return -d, 1.0  # value, d/dlogp
    if kind == "k2":
        return 0.5 * d * d, -d
    dc = min(max(d, -20.0), 20.0)
    k3, g3 = math.exp(dc) - dc - 1, (-(math.exp(dc) - 1) if -20 < d < 20 else 0.0)
    if kind == "k3":
        return k3, g3
    return min(max(k3, -10.0), 10.0), (g3 if -10 < k3 < 10 else 0.0)


@pytest.mark.parametrize("kind", sorted(KL_ESTIMATORS))
def test_kl_estimator_value_and_gradient(kind):
    logp = torch.full((len(D),), -1.0, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.0 + d for d in D], dtype=torch.float64)
    val = kl_penalty(logp, ref, kind)
    (grad,) = torch.autograd.grad(val.sum(), logp)
    for k, d in enumerate(D):
        v, g = kl_want(kind, d)
        assert val[k].item() == pytest.approx(v, rel=1e-12, abs=1e-12), (kind, d)
        assert grad[k].item() == pytest.approx(g, rel=1e-12, abs=1e-12), (kind, d)

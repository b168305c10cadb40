import math

import pytest
import torch

from signopt.rl.advantages import ADVANTAGES, compute_advantages


def rewards_binary(n=4, G=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, 2, (n * G,), generator=g).double()
    r.view(n, G)[:, 0], r.view(n, G)[:, 1] = 1.0, 0.0
    return r


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_degenerate_group_gives_zero(name):
    r = torch.tensor([1.0] * 5 + [0.0] * 5 + [0.3] * 5, dtype=torch.float64)
    kw = {"lengths": torch.arange(1, 16)} if name == "opo" else {}
    a = compute_advantages(name, r, 5, **kw).values
    assert torch.equal(a, torch.zeros_like(a))


def test_grpo_formula():
    r = rewards_binary()
    a = compute_advantages("grpo", r, 6).values.view(4, 6)
    g = r.view(4, 6)
    assert torch.allclose(a, (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4))


def test_grpo_fp32_residue_is_not_amplified():
    r = torch.full((8,), 0.1, dtype=torch.float32)
    assert compute_advantages("grpo", r, 8).values.abs().max() == 0


def test_rloo_identity():
    r = torch.rand(12, dtype=torch.float64)
    a = compute_advantages("rloo", r, 4).values.view(3, 4)
    g = r.view(3, 4)
    assert torch.allclose(a, 4 / 3 * (g - g.mean(1, keepdim=True)))
    loo = (g.sum(1, keepdim=True) - g) / 3
    assert torch.allclose(a, g - loo)


def test_dgpo_abs_sum():
    r = torch.cat([rewards_binary(3, 6), torch.ones(6, dtype=torch.float64)])
    g = r.view(4, 6)[:3]
    spread = (g - g.mean(1, keepdim=True)).abs().sum(1)
    a = compute_advantages("dgpo", r, 6, question_weight=False).values.view(4, 6)
    # MathForge's +1e-4 in the denominator: Σ|A| = G·S/(S + 1e-4), S = Σ|r − mean|
    assert torch.allclose(a.abs().sum(1)[:3], 6 * spread / (spread + 1e-4), rtol=0, atol=1e-12)
    assert a[3].abs().sum() == 0
    exact = compute_advantages("dgpo", r, 6, question_weight=False, eps=0.0).values.view(4, 6)
    assert torch.allclose(exact.abs().sum(1)[:3], torch.full((3,), 6.0, dtype=torch.float64))
    w = compute_advantages("dgpo", r, 6, eps=0.0).values.view(4, 6)
    assert torch.allclose(w.abs().sum(), torch.tensor(6.0 * 3, dtype=torch.float64))


def test_mc_grpo_pivot_dropped():
    r = torch.rand(5 * 7, dtype=torch.float64)  # G = 6, G + 1 = 7 rollouts per group
    res = compute_advantages("mc_grpo", r, 7)
    keep, a = res.keep.view(5, 7), res.values.view(5, 7)
    assert torch.equal((~keep).sum(1), torch.ones(5, dtype=torch.long))
    assert torch.equal(a[~keep], torch.zeros(5, dtype=torch.float64))
    med = r.view(5, 7).median(1).values
    assert torch.equal(r.view(5, 7)[~keep], med)


def test_bnpo_beta_identities():
    r = rewards_binary()
    g = r.view(4, 6)
    p = g.mean(1, keepdim=True)
    a11 = compute_advantages("bnpo", r, 6, alpha=1.0, beta=1.0).values.view(4, 6)
    assert torch.allclose(a11, g - p)
    a15 = compute_advantages("bnpo", r, 6, alpha=1.5, beta=1.5).values.view(4, 6)
    std_pop = g.std(1, unbiased=False, keepdim=True)
    assert torch.allclose(a15, math.pi / 8 * (g - p) / std_pop)


def test_dr_grpo_batch_std_opo():
    r = rewards_binary()
    g = r.view(4, 6)
    assert torch.allclose(compute_advantages("dr_grpo", r, 6).values.view(4, 6), g - g.mean(1, keepdim=True))
    bs = compute_advantages("batch_std", r, 6, eps=0.0).values.view(4, 6)
    assert torch.allclose(bs, (g - g.mean(1, keepdim=True)) / r.std())
    lengths = torch.arange(1, 25)
    lo = lengths.view(4, 6).double()
    opo = compute_advantages("opo", r, 6, lengths=lengths).values.view(4, 6)
    assert torch.allclose(opo, g - (lo * g).sum(1, keepdim=True) / lo.sum(1, keepdim=True))


def test_riskpo_bundles():
    r = rewards_binary(10, 4)
    a = compute_advantages("riskpo", r, 4, bundle_size=5).values.view(10, 4)
    assert torch.equal(a[0], a[4]) and torch.equal(a[5], a[9])  # one advantage per bundle rollout
    assert (a <= 0).all()  # clip(S, q_a, q_b) − q_b ≤ 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="advantage='nope'.*allowed values"):
        compute_advantages("nope", torch.zeros(4), 2)
    with pytest.raises(ValueError, match="group_size"):
        compute_advantages("grpo", torch.zeros(5), 2)
    with pytest.raises(ValueError, match="lengths"):
        compute_advantages("opo", torch.zeros(4), 2)
    with pytest.raises(ValueError, match="does not take"):
        compute_advantages("grpo", torch.zeros(4), 2, bogus=1)

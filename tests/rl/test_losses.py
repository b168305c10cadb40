import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from signopt.rl.aggregation import AGGREGATIONS, aggregate
from signopt.rl.experimental_losses import r2vpo_dual_update
from signopt.rl.loss_inputs import LossInputs, step_norms
from signopt.rl.losses import EXPERIMENTAL, LOSSES, compute_loss

from rl_testutils import make_inputs


def grad_of(loss_fn, x: LossInputs):
    logp = x.logp.detach().clone().requires_grad_(True)
    y = replace(x, logp=logp)
    loss = loss_fn(y)
    (g,) = torch.autograd.grad(loss, logp, allow_unused=True)
    return loss.detach(), torch.zeros_like(logp) if g is None else g


def pg(agg):
    """agg(−A·logp): the plain policy-gradient surrogate."""
    return lambda x: aggregate(-x.adv * x.logp, x.mask, agg)


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("name", ["grpo", "dapo", "dr_grpo", "vanilla_dual_clip", "riskpo", "hapo"])
def test_on_policy_clip_gradient_is_policy_gradient(name, agg):  # identity 1
    x = make_inputs(on_policy=True)
    _, g = grad_of(lambda y: compute_loss(name, y, agg=agg), x)
    _, ref = grad_of(pg(agg), x)
    assert torch.allclose(g, ref, atol=1e-12)


def test_gspo_single_token_equals_grpo_off_policy():  # identity 2
    x = make_inputs(T=1, spread=1e-3)
    lv, g = grad_of(lambda y: compute_loss("gspo", y, clip_eps_low=3e-4, clip_eps_high=4e-4), x)
    rv, ref = grad_of(lambda y: compute_loss("grpo", y, clip_eps=3e-4, clip_eps_high=4e-4), x)
    assert torch.allclose(lv, rv) and torch.allclose(g, ref, atol=1e-12)
    assert (g != 0).any() and (g == 0).any()  # some tokens inside, some outside the clip


@pytest.mark.parametrize("name", ["gspo", "gspo_token", "gmpo", "sapo"])
def test_on_policy_sequence_losses_have_seq_mean_gradient(name):  # identity 3
    x = make_inputs(on_policy=True)
    _, g = grad_of(lambda y: compute_loss(name, y), x)
    _, ref = grad_of(pg("seq-mean-token-mean"), x)
    assert torch.allclose(g, ref, atol=1e-12)


@pytest.mark.parametrize("clip_mode", ["max", "symmetric"])
def test_on_policy_cispo_has_token_mean_gradient(clip_mode):  # identity 3
    x = make_inputs(on_policy=True)
    _, g = grad_of(lambda y: compute_loss("cispo", y, clip_mode=clip_mode), x)
    _, ref = grad_of(pg("token-mean"), x)
    assert torch.allclose(g, ref, atol=1e-12)


def test_cispo_clip_semantics_differ_off_policy():
    x = make_inputs(spread=1.0)
    _, g_max = grad_of(lambda y: compute_loss("cispo", y, clip_mode="max"), x)
    _, g_sym = grad_of(lambda y: compute_loss("cispo", y, clip_mode="symmetric"), x)
    r = (x.logp - x.old_logp).exp().detach()
    w = torch.where(x.mask, r.clamp(max=5.0), 0.0)
    assert torch.allclose(g_max, -w * x.adv / x.mask.sum(), atol=1e-12)
    assert not torch.allclose(g_max, g_sym)


def test_dapo_symmetric_equals_ppo_token_mean():  # identity 4
    x = make_inputs(spread=0.5)
    lv, g = grad_of(lambda y: compute_loss("dapo", y, clip_eps_low=0.2, clip_eps_high=0.2), x)
    rv, ref = grad_of(lambda y: compute_loss("grpo", y, clip_eps=0.2, agg="token-mean"), x)
    assert torch.equal(lv, rv) and torch.equal(g, ref)


@pytest.mark.parametrize("eps_low,eps_high", [(0.2, 0.2), (0.2, 0.28)])
def test_zero_gradient_pattern(eps_low, eps_high):  # identity 5
    x = make_inputs(n_groups=6, T=8, spread=0.4, seed=3)
    x.advantages[::5] = 0.0
    _, g = grad_of(lambda y: compute_loss("dapo", y, clip_eps_low=eps_low, clip_eps_high=eps_high), x)
    r = (x.logp - x.old_logp).exp().detach()
    a = x.adv.expand_as(r)
    zero = ((a > 0) & (r > 1 + eps_high)) | ((a < 0) & (r < 1 - eps_low)) | (a == 0) | ~x.mask
    assert zero.any() and (~zero).any()
    assert torch.equal(g == 0, zero)


def test_nft_on_policy_is_policy_gradient():  # identity 9
    x = make_inputs(on_policy=True)
    g_r = x.rewards.view(-1, x.group_size)
    a = (g_r - g_r.mean(1, keepdim=True)).reshape(-1, 1)
    _, g = grad_of(lambda y: compute_loss("nft", y), x)
    _, ref = grad_of(lambda y: torch.where(y.mask, -a * y.logp, 0.0).sum() / 1000, x)
    assert torch.allclose(g, ref, atol=1e-12)


def test_real_on_policy_value():  # identity 11
    x = make_inputs(n_groups=4, group_size=5, on_policy=True, seed=1)
    x.rewards.view(4, 5)[3] = 1.0  # one group without both labels
    loss = compute_loss("real", x)
    g = x.rewards.view(4, 5)
    n_pos = (g > g.mean(1, keepdim=True)).sum(1).double()[:3]
    n_neg = (g < g.mean(1, keepdim=True)).sum(1).double()[:3]
    # REAL's release divides by every question of the step (4 here), the unmixed one included
    assert torch.allclose(loss, (torch.log1p(n_neg) + torch.log1p(n_pos)).sum() / 4)


def _split(x: LossInputs, n_parts: int):
    """Micro-batches of whole groups, each carrying the whole step's normalisers."""
    norms = step_norms(x.mask, x.rewards, x.group_size, x.entropy)
    n_groups = x.mask.shape[0] // x.group_size
    bounds = torch.linspace(0, n_groups, n_parts + 1).round().long().tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sl = slice(lo * x.group_size, hi * x.group_size)
        yield LossInputs(
            x.logp[sl], x.old_logp[sl], x.mask[sl], x.advantages[sl], x.ref_logp[sl], x.rewards[sl], x.entropy[sl],
            x.tokens[sl], x.group_size, norms,
        )


SPLIT_KNOBS = {"d3s": {"keep_frac": 0.5}, "etr": {"lam_micro": 0.5, "lam_macro": 1.0}, "minpro": {"gamma": 1.0},
               "r2vpo": {"lam": 0.3}, "fg_expo": {"sigma": 0.3, "beta": 0.05}, "progrpo": {"alpha": 0.5},
               "capo": {"threshold": 0.05}, "grpo": {"beta": 0.04}}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_micro_batch_split_invariance(name):  # identity 10
    x = make_inputs(n_groups=5, group_size=4, T=7, spread=0.3, seed=2)
    knobs = SPLIT_KNOBS.get(name, {})
    full, g_full = grad_of(lambda y: compute_loss(name, y, **knobs), x)
    assert g_full.abs().sum() > 0
    for parts in (2, 5):
        logp = x.logp.detach().clone().requires_grad_(True)
        y = replace(x, logp=logp)
        total = sum(compute_loss(name, mb, **knobs) for mb in _split(y, parts))
        (g,) = torch.autograd.grad(total, logp)
        assert torch.allclose(total.detach(), full, atol=1e-12), (name, parts)
        assert torch.allclose(g, g_full, atol=1e-12), (name, parts)


def test_per_micro_batch_token_mean_is_not_split_invariant():
    """The bug class the global normaliser avoids: averaging micro-batch token-means."""
    x = make_inputs(n_groups=5, group_size=4, T=7, seed=2)
    _, g_full = grad_of(lambda y: compute_loss("dapo", y), x)
    logp = x.logp.detach().clone().requires_grad_(True)
    parts = list(_split(replace(x, logp=logp), 5))
    for p in parts:
        p.norms = {}
    total = sum(compute_loss("dapo", p) for p in parts) / 5
    (g,) = torch.autograd.grad(total, logp)
    assert not torch.allclose(g, g_full)


NEUTRAL = {
    "dhpo": [({"weight": 1.0}, "grpo", {}), ({"weight": 0.0}, "gspo", {})],
    "minpro": [({"gamma": 0.0}, "grpo", {})],
    "etr": [({"lam_micro": 0.0, "lam_macro": 0.0}, "grpo", {})],
    "d3s": [({"keep_frac": 1.0}, "grpo", {})],
    "fg_expo": [({"sigma": math.inf, "beta": 0.0}, "grpo", {})],
    "progrpo": [({"alpha": 0.0}, "grpo", {})],
    "capo": [({"threshold": math.inf}, "grpo", {})],
}


@pytest.mark.parametrize("name", EXPERIMENTAL)
def test_experimental_losses_reduce_to_base(name):
    x = make_inputs(spread=0.5, seed=4)
    if name == "r2vpo":
        lv, g = grad_of(lambda y: compute_loss("r2vpo", y, lam=0.0), x)
        rv, ref = grad_of(lambda y: aggregate(-y.log_ratio.exp() * y.adv, y.mask, "seq-mean-token-mean"), x)
        assert torch.equal(lv, rv) and torch.equal(g, ref)
        return
    for knobs, base, base_knobs in NEUTRAL[name]:
        lv, g = grad_of(lambda y: compute_loss(name, y, **knobs), x)
        rv, ref = grad_of(lambda y: compute_loss(base, y, **base_knobs), x)
        assert torch.allclose(lv, rv, rtol=0, atol=1e-15) and torch.allclose(g, ref, rtol=0, atol=1e-15), knobs
    lv_on, _ = grad_of(lambda y: compute_loss(name, y), x)
    assert torch.isfinite(lv_on)


def test_r2vpo_dual_update():
    x = make_inputs(spread=0.5)
    lr = torch.where(x.mask, x.logp - x.old_logp, 0.0).exp()[x.mask]
    var = float(lr.detach().var(unbiased=False))
    assert r2vpo_dual_update(0.1, x.logp.detach(), x.old_logp, x.mask, eta=2.0, delta=0.0) == pytest.approx(0.1 + 2 * var)
    assert r2vpo_dual_update(0.0, x.logp.detach(), x.old_logp, x.mask, eta=1.0, delta=1e9) == 0.0


def test_gtpo_conflict_tokens():
    G, T = 4, 3
    tokens = torch.tensor([[5, 6, 7], [5, 9, 7], [5, 6, 8], [1, 2, 3]])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(G, T, dtype=torch.bool)
    logp = torch.full((G, T), -1.0, dtype=torch.float64, requires_grad=True)
    x = LossInputs(logp, logp.detach().clone(), mask, adv, rewards=(adv > 0).double(), tokens=tokens,
                   entropy=torch.full((G, T), 2.0, dtype=torch.float64), group_size=G)
    (g,) = torch.autograd.grad(compute_loss("gtpo", x, entropy_threshold=10.0, entropy_coef=0.0), logp)
    # shared prefixes: token 5 at t=0 (rows 0,1 pos; row 2 neg), then token 6 at t=1 (row 0 pos,
    # row 2 neg); no shared suffix (last tokens 7, 7 vs 8, 3). Each row is divided by its count.
    w = torch.tensor([[2, 2, 1], [2, 1, 1], [0, 0, 1], [1, 1, 1]], dtype=torch.float64)
    n = torch.tensor([2.0, 1.0, 2.0, 1.0], dtype=torch.float64).unsqueeze(1)
    assert torch.allclose(g, -adv.unsqueeze(1) * w / T / n / G)
    (g_f,) = torch.autograd.grad(compute_loss("gtpo", x), logp)  # mean entropy 2 > 0.7: filtered out
    assert torch.equal(g_f, torch.zeros_like(g_f))


def test_trpa_pairs():
    """One pair, x_w − x_l = 0.5 − (−0.5) = 1: −log σ(β·a·1) with a = 2.5 when the winner reaches
    top_reward (a correct answer) and 1 otherwise; on-policy, so the trust-region KL is 0."""
    logp = torch.tensor([[-1.0], [-2.0]], dtype=torch.float64)
    ref = torch.full((2, 1), -1.5, dtype=torch.float64)
    for rewards, want in (([1.0, 0.0], math.log1p(math.exp(-0.25))), ([0.5, 0.0], math.log1p(math.exp(-0.1)))):
        x = LossInputs(logp, logp.clone(), torch.ones(2, 1, dtype=torch.bool), torch.zeros(2, dtype=torch.float64),
                       ref_logp=ref, rewards=torch.tensor(rewards, dtype=torch.float64), group_size=2)
        assert compute_loss("trpa", x).item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("garbage", [(800.0, -800.0), (math.inf, math.inf)])  # the latter: inf − inf = nan
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_padding_garbage_is_masked_before_exp(name, garbage):
    x = make_inputs(seed=6)
    pad = ~x.mask
    new, old = garbage
    logp = torch.where(pad, new, x.logp.detach()).requires_grad_(True)
    y = replace(x, logp=logp, old_logp=torch.where(pad, old, x.old_logp), ref_logp=torch.where(pad, old, x.ref_logp))
    loss = compute_loss(name, y, **SPLIT_KNOBS.get(name, {}))
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert torch.equal(g[pad], torch.zeros_like(g[pad]))


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(LOSSES)),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3, 1e6]),
    seed=st.integers(0, 10_000),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_extreme_log_probs_finite(name, scale, seed, dtype):
    x = make_inputs(seed=seed)
    g = torch.Generator().manual_seed(seed)
    logp = (-scale * torch.rand(x.logp.shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(True)
    old = (-scale * torch.rand(x.logp.shape, generator=g, dtype=torch.float64)).to(dtype)
    ref = (-scale * torch.rand(x.logp.shape, generator=g, dtype=torch.float64)).to(dtype)
    y = replace(x, logp=logp, old_logp=old, ref_logp=ref, advantages=x.advantages.to(dtype), entropy=x.entropy.to(dtype))
    loss = compute_loss(name, y, **SPLIT_KNOBS.get(name, {}))
    (grad,) = torch.autograd.grad(loss, logp, allow_unused=True)
    assert torch.isfinite(loss)
    assert grad is None or torch.isfinite(grad).all()


def test_bad_names_and_knobs():
    x = make_inputs()
    with pytest.raises(ValueError, match="loss='ppo'.*allowed values: grpo"):
        compute_loss("ppo", x)
    with pytest.raises(ValueError, match="does not take clip"):
        compute_loss("grpo", x, clip=0.1)
    with pytest.raises(ValueError, match="agg='mean'"):
        compute_loss("grpo", x, agg="mean")
    with pytest.raises(ValueError, match="clip_mode"):
        compute_loss("cispo", x, clip_mode="both")
    with pytest.raises(ValueError, match="kl='k4'"):
        compute_loss("grpo", x, beta=0.1, kl="k4")
    with pytest.raises(ValueError, match="needs ref_logp"):
        compute_loss("trpa", replace(x, ref_logp=None))

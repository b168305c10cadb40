"""Every loss off-policy, at non-default knobs: value and gradient against an fp64 oracle written
token by token in this file (oracle_case.py), never by calling the code under test."""

import math
from dataclasses import replace

import pytest
import torch

from signopt.rl.losses import LOSSES, compute_loss

from oracle_case import (
    BINARY_REWARDS, G, GRADED_REWARDS, N_GROUPS, agg, group_rows, kl_token, log_ratio, make_case, pop_var,
    ppo_token, seq_mean_log_ratio, valid_tokens,
)


def check(name: str, knobs: dict, oracle, rewards=BINARY_REWARDS, x=None):
    """Value and gradient of ``compute_loss(name)`` equal the oracle's (fp64, rtol 1e-10)."""
    x = make_case(rewards) if x is None else x
    lp = x.logp.detach().clone().requires_grad_(True)
    got = compute_loss(name, replace(x, logp=lp), **knobs)
    (g_got,) = torch.autograd.grad(got, lp)
    lp2 = x.logp.detach().clone().requires_grad_(True)
    want = oracle(x, lp2)
    (g_want,) = torch.autograd.grad(want, lp2)
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-13)
    assert g_want.abs().sum() > 0
    return x


def ratio(x, lp, i, t):
    return torch.exp(log_ratio(x, lp, i, t))


def test_case_is_off_policy_around_the_clip_bounds():
    x = make_case()
    r = torch.exp(x.logp - x.old_logp)[x.mask]
    a = x.adv.expand_as(x.logp)[x.mask]
    for lo, hi in ((0.8, 1.2), (0.9, 1.1), (0.85, 1.15)):
        for sign in (1, -1):
            side = sign * a > 0
            assert (r[side] < lo).any() and (r[side] > hi).any() and ((r[side] > lo) & (r[side] < hi)).any()


@pytest.mark.parametrize("kl", ["k1", "k2", "k3", "low_var_kl"])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_grpo(kl, mode):
    knobs = dict(clip_eps=0.15, clip_eps_high=0.25, beta=0.07, kl=kl, agg=mode)

    def oracle(x, lp):
        return agg(x, lambda i, t: ppo_token(ratio(x, lp, i, t), x.advantages[i], 0.15, 0.25)
                   + 0.07 * kl_token(kl, lp[i, t], x.ref_logp[i, t]), mode)

    check("grpo", knobs, oracle)


def test_dr_grpo_default_aggregation():
    check("dr_grpo", dict(clip_eps=0.1), lambda x, lp: agg(
        x, lambda i, t: ppo_token(ratio(x, lp, i, t), x.advantages[i], 0.1, 0.1), "seq-mean-token-sum-norm"))


def test_dapo():
    check("dapo", dict(clip_eps_low=0.1, clip_eps_high=0.3), lambda x, lp: agg(
        x, lambda i, t: ppo_token(ratio(x, lp, i, t), x.advantages[i], 0.1, 0.3), "token-mean"))


def test_riskpo_loss():
    check("riskpo", dict(clip_eps=0.15), lambda x, lp: agg(
        x, lambda i, t: ppo_token(ratio(x, lp, i, t), x.advantages[i], 0.15, 0.15), "token-mean"))


def gspo_oracle(x, lp, lo=0.05, hi=0.08):
    B = x.mask.shape[0]
    total = 0.0
    for i in range(B):
        if valid_tokens(x, i):
            s = torch.exp(seq_mean_log_ratio(x, lp, i))
            total = total + ppo_token(s, x.advantages[i], lo, hi)
    return total / B


def test_gspo():
    x = make_case()
    s = torch.exp(torch.stack([seq_mean_log_ratio(x, x.logp, i) for i in range(12)]))
    assert (s > 1.08).any() and (s < 0.95).any() and ((s > 0.95) & (s < 1.05)).any()
    check("gspo", dict(clip_eps_low=0.05, clip_eps_high=0.08), gspo_oracle)


@pytest.mark.parametrize("name", ["gspo", "gmpo"])
def test_fully_masked_row_adds_nothing(name):
    """A row with no valid token (overlong filter) contributes 0 to the value; it still counts in N."""
    x = make_case()
    x.mask[3] = False
    x.advantages[3] = 5.0
    knobs = dict(clip_eps_low=0.05, clip_eps_high=0.08) if name == "gspo" else dict(clip_log=0.25)
    oracle = gspo_oracle if name == "gspo" else gmpo_oracle
    check(name, knobs, oracle, x=x)


def test_gspo_token():
    def oracle(x, lp):
        def tok(i, t):
            log_s = torch.clamp(seq_mean_log_ratio(x, lp, i).detach() + lp[i, t] - lp[i, t].detach(), max=10.0)
            return ppo_token(torch.exp(log_s), x.advantages[i], 0.05, 0.08)
        return agg(x, tok, "seq-mean-token-sum")

    check("gspo_token", dict(clip_eps_low=0.05, clip_eps_high=0.08, agg="seq-mean-token-sum"), oracle)


def gmpo_oracle(x, lp, c=0.25):
    B = x.mask.shape[0]
    total = 0.0
    for i in range(B):
        ts = valid_tokens(x, i)
        if not ts:
            continue
        sgn = float(torch.sign(x.advantages[i]))
        logs = []
        for t in ts:
            signed = sgn * log_ratio(x, lp, i, t)
            logs.append(sgn * torch.minimum(signed, torch.clamp(signed, -c, c)))
        total = total - x.advantages[i] * torch.exp(sum(logs) / len(ts))  # geometric mean of the ratios
    return total / B


def test_gmpo():
    check("gmpo", dict(clip_log=0.25), gmpo_oracle)


@pytest.mark.parametrize("mode", ["max", "symmetric"])
def test_cispo(mode):
    def weight(r):
        return torch.clamp(r, max=1.3) if mode == "max" else torch.clamp(r, 0.9, 1.15)

    check("cispo", dict(clip_mode=mode, eps_max=1.3, clip_eps_low=0.1, clip_eps_high=0.15, agg="seq-mean-token-mean"),
          lambda x, lp: agg(x, lambda i, t: -weight(ratio(x, lp, i, t)).detach() * x.advantages[i] * lp[i, t],
                            "seq-mean-token-mean"))


def test_sapo():
    def tok(x, lp, i, t):
        a = x.advantages[i]
        tau = 1.3 if a > 0 else 2.7
        return -torch.sigmoid(tau * (ratio(x, lp, i, t) - 1)) * (4.0 / tau) * a

    check("sapo", dict(tau_pos=1.3, tau_neg=2.7), lambda x, lp: agg(x, lambda i, t: tok(x, lp, i, t),
                                                                    "seq-mean-token-mean"))


def test_vanilla_dual_clip():
    def tok(x, lp, i, t):
        a = x.advantages[i]
        loss = ppo_token(ratio(x, lp, i, t), a, 0.1, 0.1)
        return torch.minimum(loss, -a * 1.3) if a < 0 else loss

    x = make_case()
    r = torch.exp(x.logp - x.old_logp)[x.mask]
    assert ((x.adv.expand_as(x.logp)[x.mask] < 0) & (r > 1.3)).any()  # the second clip is active
    check("vanilla_dual_clip", dict(clip_eps=0.1, clip_ratio_c=1.3), lambda x, lp: agg(
        x, lambda i, t: tok(x, lp, i, t), "token-mean"))


def test_real():
    def oracle(x, lp):
        total = 0.0
        for q in range(N_GROUPS):
            rows = list(group_rows(q))
            rw = [float(x.rewards[i]) for i in rows]
            mean = sum(rw) / G
            s = {i: seq_mean_log_ratio(x, lp, i) / 0.7 for i in rows}
            pos = [i for i in rows if float(x.rewards[i]) > mean]
            neg = [i for i in rows if float(x.rewards[i]) < mean]
            if pos and neg:
                total = total + torch.log(1 + sum(torch.exp(s[i]) for i in neg))
                total = total + torch.log(1 + sum(torch.exp(-s[i]) for i in pos))
        return total / N_GROUPS

    check("real", dict(tau=0.7), oracle, rewards=GRADED_REWARDS)
    rewards = list(GRADED_REWARDS)
    rewards[8:12] = [0.5] * 4  # one question without both labels: still counted in the divisor
    check("real", dict(tau=0.7), oracle, rewards=rewards)


def gtpo_conflicts(x, i):
    """GTPO's conflict positions of rollout i: (shared-prefix run, shared-suffix run), by loops."""
    a = float(x.advantages[i])
    if a == 0:
        return set(), set()
    rows = group_rows(i // G)
    own = valid_tokens(x, i)

    def run(position_in):  # position_in(j, k) -> the k-th compared position of row j, or None
        out = set()
        for k in range(len(own)):
            t = position_in(i, k)
            tok = int(x.tokens[i, t])
            hit = {s: any(float(x.advantages[j]) * s > 0 and position_in(j, k) is not None
                          and int(x.tokens[j, position_in(j, k)]) == tok for j in rows) for s in (1, -1)}
            if not (hit[1] and hit[-1]):
                break
            out.add(t)
        return out

    def forward(j, k):
        return k if k < len(valid_tokens(x, j)) else None

    def backward(j, k):
        n = len(valid_tokens(x, j))
        return n - 1 - k if k < n else None

    return run(forward), run(backward)


@pytest.mark.parametrize("is_ratio", [False, True])
def test_gtpo(is_ratio):
    boost, thr, c = 2.7, 1.0, 0.2

    def oracle(x, lp):
        total = 0.0
        for i in range(x.mask.shape[0]):
            ts = valid_tokens(x, i)
            if not ts:
                continue
            a = float(x.advantages[i])
            prefix, suffix = gtpo_conflicts(x, i)
            side = boost if a > 0 else 0.0
            h_bar = sum(float(x.entropy[i, s]) for s in ts) / len(ts)
            a_s = a - c * h_bar if h_bar <= thr else 0.0
            row = 0.0
            for t in ts:
                delta = (side if t in prefix else 1.0) * (side if t in suffix else 1.0)
                r = ratio(x, lp, i, t) if is_ratio else torch.exp(lp[i, t] - lp[i, t].detach())
                row = row - a_s * delta * r
            total = total + row / len(ts) / max(len(prefix | suffix), 1)
        return total / x.mask.shape[0]

    x = make_case()
    h = [float(x.entropy[i, valid_tokens(x, i)].mean()) for i in range(12)]
    assert min(h) <= 1.0 < max(h)  # the entropy filter keeps some rows and drops others
    assert x.advantages[5] == 0 and h[5] <= 1.0  # an A = 0 rollout is shaped to −c·H̄
    runs = [gtpo_conflicts(x, i) for i in range(12)]
    assert any(len(p) >= 2 and len(s) >= 2 and x.advantages[i] > 0 for i, (p, s) in enumerate(runs))
    assert any(p & s for p, s in runs)  # a token in both runs: δ = 0·0
    # row 7, t = 1: same token as a positive rollout (row 6) and itself negative, but after a
    # non-conflict position: outside the prefix run
    assert int(x.tokens[7, 1]) == int(x.tokens[6, 1]) and x.advantages[6] > 0 > x.advantages[7]
    assert 1 not in runs[7][0] | runs[7][1] and h[7] <= 1.0
    check("gtpo", dict(conflict_boost=boost, entropy_threshold=thr, entropy_coef=c, is_ratio=is_ratio), oracle)


def test_nft():
    def oracle(x, lp):
        total = 0.0
        for i in range(x.mask.shape[0]):
            q = i // G
            acc = sum(float(x.rewards[j]) for j in group_rows(q)) / G
            if acc in (0.0, 1.0):
                continue
            rh = min(max(acc, 0.02), 0.98)
            for t in valid_tokens(x, i):
                big_r = torch.exp(torch.clamp(log_ratio(x, lp, i, t), max=10.0))
                if x.rewards[i] > 0:
                    loss = -torch.log(big_r)
                else:
                    proxy = (1 - rh * big_r) / (1 - rh)
                    proxy = proxy + (torch.clamp(proxy, min=0.9) - proxy).detach()  # clamp_preserve_grad
                    loss = -1.5 * torch.log(proxy)
                total = total + (1 - rh) * loss
        return total / 100.0

    x = make_case()
    acc = torch.tensor(BINARY_REWARDS, dtype=torch.float64).view(N_GROUPS, G).mean(1).repeat_interleave(G)
    r = torch.exp(x.logp - x.old_logp)
    wrong = x.mask & (x.rewards == 0).unsqueeze(1)
    assert (wrong & (acc.unsqueeze(1) * r > 1 - 0.9 * (1 - acc.unsqueeze(1)))).any()  # the clamp is active
    check("nft", dict(scale=100.0, clamp_negative=0.9, neg_weight=1.5), oracle)


def test_nft_clamped_token_gradient_matches_the_release():
    """The issue's numbers: r̂ = 0.75, R = 1.30 / 1.333 / 1.40 on a wrong rollout → token gradient
    r̂R(1 − r̂)/((1 − r̂)·1000) = 0.000975 / 0.00099975 / 0.00105 (value clamped at 1, gradient kept)."""
    for big_r, want in ((1.30, 0.000975), (1.333, 0.00099975), (1.40, 0.00105)):
        rewards = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
        lp = torch.full((4, 1), -1.0, dtype=torch.float64, requires_grad=True)
        old = torch.full((4, 1), -1.0 - math.log(big_r), dtype=torch.float64)
        from signopt.rl.loss_inputs import LossInputs

        x = LossInputs(lp, old, torch.ones(4, 1, dtype=torch.bool), torch.zeros(4, dtype=torch.float64),
                       rewards=rewards, group_size=4)
        (g,) = torch.autograd.grad(compute_loss("nft", x), lp)
        assert g[3, 0].item() == pytest.approx(want, rel=1e-9)


def test_nft_clamps_the_group_accuracy():
    """r̂ is clamped to [0.02, 0.98] as in the release: a group of 64 with one right answer has
    accuracy 1/64 < 0.02."""
    from signopt.rl.loss_inputs import LossInputs

    n = 64
    g = torch.Generator().manual_seed(3)
    lp = -torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.1
    old = lp - 0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    rewards = torch.zeros(n, dtype=torch.float64)
    rewards[7] = 1.0
    x = LossInputs(lp, old, torch.ones(n, 1, dtype=torch.bool), torch.zeros(n, dtype=torch.float64),
                   rewards=rewards, group_size=n)

    def oracle(x, lp):
        rh, total = 0.02, 0.0
        for i in range(n):
            big_r = torch.exp(lp[i, 0] - x.old_logp[i, 0])
            if x.rewards[i] > 0:
                total = total - torch.log(big_r)
            else:
                proxy = (1 - rh * big_r) / (1 - rh)
                total = total - torch.log(proxy + (torch.clamp(proxy, min=1.0) - proxy).detach())
        return (1 - rh) * total / 1000.0

    check("nft", {}, oracle, x=x)


def _trpa_case(rewards):
    """make_case with one token's log π_old/π = 4: low_var_kl's clamp at 10 is active."""
    x = make_case(rewards)
    old = x.old_logp.clone()
    old[0, 0] = x.logp[0, 0] + 4.0
    return replace(x, old_logp=old)


def _trpa_kl(x, lp):
    return agg(x, lambda i, t: kl_token("low_var_kl", lp[i, t], x.old_logp[i, t]), "token-mean")


def _trpa_x(x, lp, i):
    ts = valid_tokens(x, i)
    return sum(lp[i, t] - x.ref_logp[i, t] for t in ts) / len(ts)


# group 1's best reward (0.5) is below top_reward = 0.75: none of its pairs is scaled
TRPA_REWARDS = [1.0, 0.0, 0.5, 0.5, 0.25, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.75]


def test_trpa():
    def oracle(x, lp):
        pairs, total = 0, 0.0
        for q in range(N_GROUPS):
            rows = list(group_rows(q))
            for w in rows:
                for l in rows:
                    if float(x.rewards[w]) > float(x.rewards[l]):
                        pairs += 1
                        a = 1.9 if float(x.rewards[w]) >= 0.75 else 1.0
                        h = a * 0.3 * (_trpa_x(x, lp, w) - _trpa_x(x, lp, l))
                        total = total - torch.log(torch.sigmoid(h))
        return total / pairs + 0.05 * _trpa_kl(x, lp)

    check("trpa", dict(beta=0.3, anisotropy=1.9, top_reward=0.75, kl_coef=0.05), oracle,
          x=_trpa_case(TRPA_REWARDS))


def test_trpa_without_pairs():
    """No group has two preference levels: −log σ(±x_i) averaged over the rollouts (+ when
    r_i ≥ top_reward), without β."""
    rewards = [1.0] * 4 + [0.0] * 4 + [0.5] * 4

    def oracle(x, lp):
        total = 0.0
        for i in range(x.mask.shape[0]):
            sign = 1.0 if float(x.rewards[i]) >= 0.5 else -1.0
            total = total - torch.log(torch.sigmoid(sign * _trpa_x(x, lp, i)))
        return total / x.mask.shape[0] + 0.05 * _trpa_kl(x, lp)

    check("trpa", dict(beta=0.3, anisotropy=1.9, top_reward=0.5, kl_coef=0.05), oracle, x=_trpa_case(rewards))


def test_hapo():
    def oracle(x, lp):
        logs = [math.log(float(x.entropy[i, t])) for i in range(12) for t in valid_tokens(x, i)]
        mu = sum(logs) / len(logs)
        sd = math.sqrt(sum((v - mu) ** 2 for v in logs) / (len(logs) - 1))

        def tok(i, t):
            h = (math.log(float(x.entropy[i, t])) - mu) / sd
            lo = 0.1 * (1 - 0.5 * h) if h <= 0 else 0.1
            hi = 0.15 * (1 + 0.5 * h) if h > 0 else 0.15
            return ppo_token(ratio(x, lp, i, t), x.advantages[i], lo, hi)
        return agg(x, tok, "token-mean")

    check("hapo", dict(clip_eps_low=0.1, clip_eps_high=0.15, alpha=0.5), oracle)


def test_dhpo():
    def oracle(x, lp):
        total = 0.0
        for i in range(12):
            ts = valid_tokens(x, i)
            token = sum(ppo_token(ratio(x, lp, i, t), x.advantages[i], 0.1, 0.1) for t in ts) / len(ts)
            seq = ppo_token(torch.exp(seq_mean_log_ratio(x, lp, i)), x.advantages[i], 0.05, 0.08)
            total = total + 0.3 * token + 0.7 * seq
        return total / 12

    check("dhpo", dict(weight=0.3, clip_eps=0.1, seq_clip_low=0.05, seq_clip_high=0.08), oracle)


def test_minpro():
    def tok(x, lp, i, t):
        prefix = min(float(log_ratio(x, lp, i, s).detach()) for s in range(t + 1))
        return math.exp(0.5 * prefix) * ppo_token(ratio(x, lp, i, t), x.advantages[i], 0.1, 0.1)

    check("minpro", dict(gamma=0.5, clip_eps=0.1), lambda x, lp: agg(
        x, lambda i, t: tok(x, lp, i, t), "seq-mean-token-mean"))


def test_etr():
    def tok(x, lp, i, t):
        var = pop_var([float(x.rewards[j]) for j in group_rows(i // G)])
        eps = 0.2 / ((1 + 0.5 * abs(float(x.advantages[i]))) * (1 + 2.0 * var))
        return ppo_token(ratio(x, lp, i, t), x.advantages[i], eps, eps)

    check("etr", dict(lam_micro=0.5, lam_macro=2.0, clip_eps=0.2), lambda x, lp: agg(
        x, lambda i, t: tok(x, lp, i, t), "seq-mean-token-mean"), rewards=GRADED_REWARDS)


def test_r2vpo():
    def tok(x, lp, i, t):
        ts = valid_tokens(x, i)
        mean_r = sum(ratio(x, lp, i, s) for s in ts) / len(ts)
        r = ratio(x, lp, i, t)
        return -r * x.advantages[i] + 0.4 * (r - mean_r) ** 2

    check("r2vpo", dict(lam=0.4), lambda x, lp: agg(x, lambda i, t: tok(x, lp, i, t), "seq-mean-token-mean"))


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean"])
def test_d3s(mode):
    def oracle(x, lp):
        kept = set()
        for q in range(N_GROUPS):
            score = {i: abs(float(x.advantages[i])) * float(x.entropy[i, valid_tokens(x, i)].mean())
                     for i in group_rows(q)}
            kept |= set(sorted(score, key=score.get, reverse=True)[:2])  # ⌈0.5·4⌉ = 2 per group
        total = 0.0
        for i in sorted(kept):
            ts = valid_tokens(x, i)
            row = sum(ppo_token(ratio(x, lp, i, t), x.advantages[i], 0.1, 0.1) for t in ts)
            total = total + (row / len(ts) if mode == "seq-mean-token-mean" else row)
        n_tokens = int(x.mask.sum())
        return total / (12 * 0.5) if mode == "seq-mean-token-mean" else total / (n_tokens * 0.5)

    check("d3s", dict(keep_frac=0.5, clip_eps=0.1, agg=mode), oracle)


def test_fg_expo():
    def tok(x, lp, i, t):
        p = sum(float(x.rewards[j]) for j in group_rows(i // G)) / G
        w = math.exp(-((p - 0.5) ** 2) / (2 * 0.3**2))
        return w * (ppo_token(ratio(x, lp, i, t), x.advantages[i], 0.1, 0.1)
                    + 0.05 * p * kl_token("k2", lp[i, t], x.ref_logp[i, t]))

    check("fg_expo", dict(sigma=0.3, beta=0.05, kl="k2", clip_eps=0.1), lambda x, lp: agg(
        x, lambda i, t: tok(x, lp, i, t), "seq-mean-token-mean"), rewards=GRADED_REWARDS)


def test_progrpo():
    def tok(x, lp, i, t):
        def c(j):
            ts = valid_tokens(x, j)
            return math.exp(-0.8 * sum(float(x.old_logp[j, s]) for s in ts) / len(ts))
        rows = group_rows(i // G)
        a = float(x.advantages[i]) * c(i) / (sum(c(j) for j in rows) / G)
        return ppo_token(ratio(x, lp, i, t), a, 0.1, 0.1)

    check("progrpo", dict(alpha=0.8, clip_eps=0.1), lambda x, lp: agg(
        x, lambda i, t: tok(x, lp, i, t), "seq-mean-token-mean"))


def test_capo():
    def tok(x, lp, i, t):
        lr = float(log_ratio(x, lp, i, t).detach())
        if abs(float(x.advantages[i])) * lr * lr > 0.02:
            return torch.zeros((), dtype=torch.float64)
        return ppo_token(ratio(x, lp, i, t), x.advantages[i], 0.1, 0.1)

    check("capo", dict(threshold=0.02, clip_eps=0.1), lambda x, lp: agg(
        x, lambda i, t: tok(x, lp, i, t), "seq-mean-token-mean"))


def test_every_loss_has_an_oracle_test():
    tested = {n.removeprefix("test_").removesuffix("_loss").removesuffix("_default_aggregation")
              for n in globals() if n.startswith("test_")}
    assert set(LOSSES) <= tested, sorted(set(LOSSES) - tested)

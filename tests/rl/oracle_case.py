"""An off-policy fp64 test case and scalar-loop helpers for the oracle tests.

The oracles in ``test_loss_oracles.py`` are written token by token with Python loops over 0-d
tensors (autograd gives their gradients); they never call signopt.rl code.
"""

import math

import torch

from signopt.rl.loss_inputs import LossInputs

N_GROUPS, G, T = 3, 4, 5
LENGTHS = [5, 3, 1, 4, 2, 5, 4, 5, 3, 1, 5, 2]
# log-ratios log(π/π_old) cycled over the valid tokens: ratios from 0.5 to 2.0, on both sides of
# every clip bound the tests use (0.8/0.85/0.9 below 1, 1.1/1.15/1.2/1.25/1.3 above)
LOG_RATIOS = [-0.69, -0.3, -0.12, -0.04, 0.0, 0.03, 0.08, 0.13, 0.2, 0.27, 0.45, 0.69, -0.2, 0.11, -0.08]
BINARY_REWARDS = [1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 1]
GRADED_REWARDS = [1.0, 0.0, 0.5, 0.5, 0.25, 0.0, 1.0, 0.25, 0.0, 1.0, 0.75, 0.75]


def make_case(rewards=BINARY_REWARDS, seed: int = 0) -> LossInputs:
    """B = 12 rollouts (3 groups of 4), T = 5, ragged right-padded masks, off-policy ratios."""
    g = torch.Generator().manual_seed(seed)
    B = N_GROUPS * G
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    logp = -torch.nn.functional.softplus(torch.randn(B, T, generator=g, dtype=torch.float64)) - 0.05
    delta = torch.zeros(B, T, dtype=torch.float64)
    k = 0
    for i in range(B):
        for t in range(T):
            if mask[i, t]:
                delta[i, t] = LOG_RATIOS[k % len(LOG_RATIOS)]
                k += 1
    old = torch.where(mask, logp - delta, -3.0 * torch.ones_like(logp))
    ref = logp + 0.8 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref[0, 0] = logp[0, 0] + 4.0  # k3 = e^4 − 5 > 10: low_var_kl's clamp is active
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    adv[5] = 0.0
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64) * 1.5 + 0.05
    tokens = torch.randint(0, 3, (B, T), generator=g)
    return LossInputs(logp=logp, old_logp=old, mask=mask, advantages=adv, ref_logp=ref,
                      rewards=torch.tensor(rewards, dtype=torch.float64), entropy=entropy, tokens=tokens,
                      group_size=G)


def valid_tokens(x: LossInputs, i: int) -> list[int]:
    return [t for t in range(x.mask.shape[1]) if bool(x.mask[i, t])]


def log_ratio(x: LossInputs, logp, i: int, t: int):
    return torch.clamp(logp[i, t] - x.old_logp[i, t], -20.0, 20.0)


def seq_mean_log_ratio(x: LossInputs, logp, i: int):
    ts = valid_tokens(x, i)
    return sum(log_ratio(x, logp, i, t) for t in ts) / max(len(ts), 1) if ts else torch.zeros((), dtype=logp.dtype)


def ppo_token(r, a, eps_low: float, eps_high: float):
    """−min(r·a, clip(r, 1 − ε_low, 1 + ε_high)·a) for 0-d tensors."""
    clipped = torch.clamp(r, 1 - eps_low, 1 + eps_high)
    return -torch.minimum(r * a, clipped * a)


def agg(x: LossInputs, per_token, mode: str):
    """Aggregate ``per_token(i, t)`` (a callable giving a 0-d tensor) over the valid tokens."""
    B = x.mask.shape[0]
    rows = [[per_token(i, t) for t in valid_tokens(x, i)] for i in range(B)]
    total = sum(sum(r) for r in rows if r)
    if mode == "token-mean":
        return total / sum(len(r) for r in rows)
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in rows if r) / B
    if mode == "seq-mean-token-sum":
        return total / B
    assert mode == "seq-mean-token-sum-norm"
    return total / (B * x.mask.shape[1])


def kl_token(kind: str, lp, ref):
    d = ref - lp
    if kind == "k1":
        return -d
    if kind == "k2":
        return 0.5 * d * d
    d = torch.clamp(d, -20.0, 20.0)
    k3 = torch.exp(d) - d - 1
    return k3 if kind == "k3" else torch.clamp(k3, -10.0, 10.0)


def group_rows(q: int) -> range:
    return range(q * G, (q + 1) * G)


def pop_var(values: list[float]) -> float:
    m = sum(values) / len(values)
    return sum((v - m) ** 2 for v in values) / len(values)


def sample_std(values: list[float]) -> float:
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))

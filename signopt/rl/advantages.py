"""Group-relative advantage estimators.

``rewards[B]`` holds ``B / G`` groups of ``G`` rollouts, each group contiguous. Every estimator
returns an :class:`Advantages` with ``values[B]`` and ``keep[B]`` (rows to train on; only
``mc_grpo`` drops rows). A group whose rewards are all equal gets A = 0 under every estimator.

* ``grpo``      (r − mean)/(std + ε), unbiased std, ε = 1e-4
* ``dr_grpo``   r − mean
* ``batch_std`` (r − mean_group)/std_batch
* ``rloo``      G/(G−1)·(r − mean) = r − leave-one-out mean
* ``mc_grpo``   G+1 rollouts; (r − median)/(MAD + 1e-3); nonzero entries × (G+1)/#nonzero; the
  median "pivot" rollout is dropped. With binary rewards MAD is often 0, so |A| reaches ~1e3.
* ``bnpo``      (r − p̂)/Beta_pdf(p̂; α, β), α, β from the mean m and unbiased variance v of the
  batch's per-prompt p̂: c = m(1 − m)/v − 1, α = max(1 + m·c/3, 1), β = max(1 + (1 − m)·c/3, 1);
  1/pdf capped at 1e6
* ``dgpo``      G·(r − mean)/(Σ|r − mean| + 1e-4) × N_valid·softmax(−acc/T) over non-degenerate
  groups (T = 2) × Σ_all |o| / Σ_non-degenerate |o| when completion lengths are given
* ``opo``       r − Σ|o|·r/Σ|o| (length-weighted baseline)
* ``riskpo``    bundles of ``bundle_size`` prompts; rollout j of a bundle scores S = Σ rewards;
  A = (clip(S, q_α, q_β) − q_β)/(β − α) [+ ω·(min(S, q_α) − q_α)/α], divided by its std
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .aggregation import check_choice, check_knobs


class Advantages(NamedTuple):
    values: Tensor
    keep: Tensor


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    if group_size < 1 or rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"group_size={group_size} must be ≥ 1 and divide the number of rewards ({rewards.numel()})"
        )
    return rewards.view(-1, group_size)


def _degenerate(g: Tensor) -> Tensor:
    """[n, 1] bool: the group's rewards are all exactly equal."""
    return (g.max(-1, keepdim=True).values == g.min(-1, keepdim=True).values)


def _result(values: Tensor, keep: Tensor | None = None) -> Advantages:
    flat = values.reshape(-1)
    return Advantages(flat, torch.ones_like(flat, dtype=torch.bool) if keep is None else keep.reshape(-1))


def grpo_advantages(rewards: Tensor, group_size: int, *, eps: float = 1e-4) -> Advantages:
    """(r − mean)/(std + ε) per group (unbiased std; degenerate groups → 0)."""
    g = _groups(rewards, group_size)
    centred = g - g.mean(-1, keepdim=True)
    std = g.std(-1, keepdim=True, unbiased=True) if group_size > 1 else torch.ones_like(centred[:, :1])
    a = centred / (std + eps)
    return _result(torch.where(_degenerate(g), torch.zeros_like(a), a))


def dr_grpo_advantages(rewards: Tensor, group_size: int) -> Advantages:
    """r − mean per group."""
    g = _groups(rewards, group_size)
    a = g - g.mean(-1, keepdim=True)
    return _result(torch.where(_degenerate(g), torch.zeros_like(a), a))


def batch_std_advantages(rewards: Tensor, group_size: int, *, eps: float = 1e-4) -> Advantages:
    """(r − mean_group)/(std_batch + ε)."""
    g = _groups(rewards, group_size)
    a = (g - g.mean(-1, keepdim=True)) / ((rewards.std(unbiased=True) if rewards.numel() > 1 else 0.0) + eps)
    return _result(torch.where(_degenerate(g), torch.zeros_like(a), a))


def rloo_advantages(rewards: Tensor, group_size: int) -> Advantages:
    """G/(G−1)·(r − mean), i.e. r minus the mean of the other G−1 rewards."""
    g = _groups(rewards, group_size)
    if group_size == 1:
        return _result(torch.zeros_like(g))
    a = group_size / (group_size - 1) * (g - g.mean(-1, keepdim=True))
    return _result(torch.where(_degenerate(g), torch.zeros_like(a), a))


def mc_grpo_advantages(rewards: Tensor, group_size: int, *, eps: float = 1e-3) -> Advantages:
    """Median-centred advantages over G+1 rollouts (``group_size`` = G+1); the pivot is dropped."""
    g = _groups(rewards, group_size)
    med, pivot = g.median(-1, keepdim=True)
    mad = (g - med).abs().median(-1, keepdim=True).values
    a = (g - med) / (mad + eps)
    nonzero = (a != 0).sum(-1, keepdim=True)
    a = torch.where(nonzero > 0, a * group_size / nonzero.clamp(min=1), a)
    keep = torch.ones_like(g, dtype=torch.bool).scatter(-1, pivot, False)
    a = a.scatter(-1, pivot, 0.0)
    return _result(a, keep)


def _beta_pdf(p: Tensor, alpha: float, beta: float) -> Tensor:
    log_b = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    p = p.clamp(1e-12, 1 - 1e-12)
    return torch.exp((alpha - 1) * torch.log(p) + (beta - 1) * torch.log1p(-p) - log_b)


def bnpo_advantages(
    rewards: Tensor, group_size: int, *, alpha: float | None = None, beta: float | None = None, max_inv_pdf: float = 1e6
) -> Advantages:
    """(r − p̂)/Beta_pdf(p̂; α, β); α, β by moments of the batch's p̂ unless given.

    Matches ``changyi7231/BNPO`` ``recipe/bnpo/src/bnpo_ray_trainer.py``
    ``compute_bnpo_outcome_advantage`` (unbiased ``var()``, ``clamp(1/pdf, max=1e6)``). Departure:
    where the release divides by a zero variance (every p̂ equal) or by a single prompt's
    variance, Beta(1, 1) is used (A = r − p̂)."""
    g = _groups(rewards, group_size)
    p_hat = g.mean(-1, keepdim=True)
    if alpha is None or beta is None:
        m, v = p_hat.mean().item(), p_hat.var(unbiased=True).item() if p_hat.numel() > 1 else 0.0
        if v > 0 and 0 < m < 1:
            common = m * (1 - m) / v - 1
            alpha, beta = max(1 + m * common / 3, 1.0), max(1 + (1 - m) * common / 3, 1.0)
        else:
            alpha, beta = 1.0, 1.0
    inv_pdf = (1.0 / _beta_pdf(p_hat, alpha, beta)).clamp(max=max_inv_pdf)
    a = (g - p_hat) * inv_pdf
    return _result(torch.where(_degenerate(g), torch.zeros_like(a), a))


def dgpo_advantages(
    rewards: Tensor, group_size: int, *, temperature: float = 2.0, question_weight: bool = True, eps: float = 1e-4,
    lengths: Tensor | None = None,
) -> Advantages:
    """G·(r − mean)/(Σ|r − mean| + ε) per group; × N_valid·softmax(−acc/T) over the non-degenerate
    groups (``question_weight``; acc is set to 1 for a group whose mean reward is 0); × Σ_all |o| /
    Σ_non-degenerate |o| when ``lengths`` (completion lengths |o|) are given.

    Matches ``AMAP-ML/MathForge`` ``trl-0.20.0/trl/trainer/grpo_trainer.py``
    ``GRPOTrainer._generate_and_score_completions`` (``enable_dgpo``, ``enable_dgpo_dqw``): ε = 1e-4
    and the length factor ``zero_mask_ratio``. Its second length factor, the per-process
    ``global_balancing_ratio``, is 1 on one process and is not applied. Degenerate groups are
    those whose rewards are exactly equal (the release: std ≈ 0)."""
    g = _groups(rewards, group_size)
    centred = g - g.mean(-1, keepdim=True)
    valid = ~_degenerate(g)
    a = torch.where(valid, group_size * centred / (centred.abs().sum(-1, keepdim=True) + eps), 0.0)
    if question_weight and valid.any():
        acc = g.mean(-1, keepdim=True)
        acc = torch.where(acc == 0, torch.ones_like(acc), acc)
        logits = torch.where(valid, -acc / temperature, float("-inf"))
        w = valid.sum() * torch.softmax(logits, dim=0)
        a = a * torch.where(valid, w, 0.0)
    if lengths is not None and valid.any():
        lens = lengths.to(g.dtype).view_as(g)
        kept = (lens * valid).sum()
        a = a * (lens.sum() / kept if kept > 0 else 1.0)
    return _result(a)


def opo_advantages(rewards: Tensor, group_size: int, *, lengths: Tensor | None = None) -> Advantages:
    """r − Σ|o|·r/Σ|o| per group (``lengths`` = completion lengths |o|)."""
    if lengths is None:
        raise ValueError("advantage='opo' needs lengths (the completion lengths)")
    g = _groups(rewards, group_size)
    lens = lengths.to(g.dtype).view_as(g)
    baseline = (lens * g).sum(-1, keepdim=True) / lens.sum(-1, keepdim=True).clamp(min=1)
    a = g - baseline
    return _result(torch.where(_degenerate(g), torch.zeros_like(a), a))


def riskpo_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    bundle_size: int = 5,
    alpha: float = 0.2,
    beta: float = 0.9,
    cvar_weight: float = 0.0,
    eps: float = 1e-4,
) -> Advantages:
    """Mixed-VaR advantages on bundle scores (see module docstring); the last bundle may be smaller."""
    if not 0 <= alpha < beta <= 1:
        raise ValueError(f"riskpo needs 0 ≤ alpha < beta ≤ 1, got alpha={alpha}, beta={beta}")
    if bundle_size < 1:
        raise ValueError(f"bundle_size={bundle_size} must be ≥ 1")
    g = _groups(rewards, group_size)
    out = torch.zeros_like(g)
    for start in range(0, g.shape[0], bundle_size):
        s = g[start : start + bundle_size].sum(0)  # [G] bundle scores, one per rollout index
        q_a, q_b = torch.quantile(s, alpha), torch.quantile(s, beta)
        a = (torch.minimum(torch.maximum(s, q_a), q_b) - q_b) / (beta - alpha)
        if cvar_weight and alpha > 0:
            a = a + cvar_weight * (torch.minimum(s, q_a) - q_a) / alpha
        std = a.std(unbiased=True) if a.numel() > 1 else torch.zeros(())
        a = torch.where(std > 0, a / (std + eps), torch.zeros_like(a))
        out[start : start + bundle_size] = a
    return _result(out)


ADVANTAGES = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "batch_std": batch_std_advantages,
    "rloo": rloo_advantages,
    "mc_grpo": mc_grpo_advantages,
    "bnpo": bnpo_advantages,
    "dgpo": dgpo_advantages,
    "opo": opo_advantages,
    "riskpo": riskpo_advantages,
}


def compute_advantages(name: str, rewards: Tensor, group_size: int, **knobs) -> Advantages:
    """Advantages of estimator ``name`` (one of ``ADVANTAGES``)."""
    check_choice("advantage", name, ADVANTAGES)
    fn = ADVANTAGES[name]
    check_knobs(f"advantage={name!r}", fn, knobs, skip=2)
    return fn(rewards, group_size, **knobs)

"""Experimental losses reconstructed from published abstracts only (tag [recon] in the catalog).

Each has knobs that, set to their neutral values, reduce it exactly to its base loss (GRPO's
clipped surrogate with seq-mean-token-mean and no KL, unless stated):

* ``dhpo``    per sequence w·mm(token-clip loss) + (1 − w)·GSPO sequence loss; w = 1 → GRPO, w = 0 → GSPO
* ``minpro``  token loss × sg(exp(γ·cummin_{s≤t} log r_s)); γ = 0 → GRPO
* ``etr``     ε_i = ε / ((1 + λ_micro·|A_i|)(1 + λ_macro·Var_group(r))); λ = 0 → GRPO
* ``r2vpo``   −r·A + λ·(r − mm(r))²; λ = 0 → unclipped policy gradient. λ follows the dual
  update λ ← max(0, λ + η(Var r − δ)) (:func:`r2vpo_dual_update`)
* ``d3s``     per group keep the ⌈f·G⌉ rollouts with largest |A|·H̄; f = 1 → GRPO
* ``fg_expo`` group weight exp(−(p − ½)²/2σ²) (Gaussian curriculum at accuracy p = ½) and
  accuracy-conditioned KL β·p; σ = ∞, β = 0 → GRPO
* ``progrpo`` A_i × c_i/mean_group(c), c_i = exp(−α·mm(old_logp)_i) (favours less likely rollouts); α = 0 → GRPO
* ``capo``    tokens whose curvature proxy |A|·(log r)² exceeds a threshold are masked; ∞ → GRPO

``bpo``/``gbpo`` are not implemented: their abstracts do not pin down a formula.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .aggregation import masked_seq_mean
from .kl import kl_penalty
from .loss_inputs import LossInputs
from .surrogate import agg_tokens, clipped_surrogate, grouped, require, seq_sum


def dhpo(
    x: LossInputs, weight: float = 0.5, clip_eps: float = 0.2, seq_clip_low: float = 3e-4, seq_clip_high: float = 4e-4
) -> Tensor:
    """w·mm(token clip loss) + (1 − w)·sequence clip loss, mean over sequences."""
    token = masked_seq_mean(clipped_surrogate(x.log_ratio.exp(), x.adv, clip_eps, clip_eps), x.mask)
    s = masked_seq_mean(x.log_ratio, x.mask).exp()
    seq = clipped_surrogate(s, x.advantages, seq_clip_low, seq_clip_high)
    return seq_sum(x, weight * token + (1 - weight) * seq)


def minpro(x: LossInputs, gamma: float = 1.0, clip_eps: float = 0.2, agg: str = "seq-mean-token-mean") -> Tensor:
    """Clipped surrogate × sg(exp(γ·cummin of log r over the prefix))."""
    prefix = torch.exp(gamma * torch.cummin(x.log_ratio, dim=-1).values).detach()
    return agg_tokens(x, prefix * clipped_surrogate(x.log_ratio.exp(), x.adv, clip_eps, clip_eps), agg)


def etr(
    x: LossInputs, lam_micro: float = 0.0, lam_macro: float = 0.0, clip_eps: float = 0.2, agg: str = "seq-mean-token-mean"
) -> Tensor:
    """Clip range shrunk by |A| (micro) and by the group's reward variance (macro)."""
    scale = 1 + lam_micro * x.adv.abs()
    if lam_macro:
        require(x, "etr", "rewards")
        var = grouped(x, x.rewards.to(x.logp.dtype)).var(-1, unbiased=False)
        scale = scale * (1 + lam_macro * var.repeat_interleave(x.group_size)).unsqueeze(-1)
    eps = clip_eps / scale
    return agg_tokens(x, clipped_surrogate(x.log_ratio.exp(), x.adv, eps, eps), agg)


def r2vpo(x: LossInputs, lam: float = 0.0, agg: str = "seq-mean-token-mean") -> Tensor:
    """−r·A + λ·(r − mm(r))² per token."""
    r = x.log_ratio.exp()
    dev = r - masked_seq_mean(r, x.mask).unsqueeze(-1)
    return agg_tokens(x, -r * x.adv + lam * dev**2, agg)


def r2vpo_dual_update(lam: float, logp: Tensor, old_logp: Tensor, mask: Tensor, eta: float, delta: float) -> float:
    """λ ← max(0, λ + η(Var r − δ)) with Var r over the valid tokens."""
    lr = torch.where(mask.bool(), (logp.detach() - old_logp).clamp(-20, 20), 0.0)
    r = lr.exp()[mask.bool()]
    var = float(r.var(unbiased=False)) if r.numel() else 0.0
    return max(0.0, lam + eta * (var - delta))


def d3s(x: LossInputs, keep_frac: float = 1.0, clip_eps: float = 0.2, agg: str = "seq-mean-token-mean") -> Tensor:
    """Keep per group the ⌈f·G⌉ rollouts with the largest |A|·H̄; sequence counts scaled by f."""
    if not 0 < keep_frac <= 1:
        raise ValueError(f"keep_frac={keep_frac} must be in (0, 1]")
    per_token = clipped_surrogate(x.log_ratio.exp(), x.adv, clip_eps, clip_eps)
    k = math.ceil(keep_frac * x.group_size)
    if k == x.group_size:
        return agg_tokens(x, per_token, agg)
    require(x, "d3s", "entropy")
    score = grouped(x, x.advantages.abs() * masked_seq_mean(x.entropy.to(x.logp.dtype), x.mask))
    top = score.topk(k, dim=-1).indices
    kept = torch.zeros_like(score, dtype=torch.bool).scatter(-1, top, True).reshape(-1, 1)
    sub = LossInputs(x.logp, x.old_logp, x.mask.bool() & kept, x.advantages, group_size=x.group_size, norms=dict(x.norms))
    sub.norms["num_seqs"] = x.norm("num_seqs") * k / x.group_size
    sub.norms["num_tokens"] = x.norm("num_tokens") * k / x.group_size
    return agg_tokens(sub, per_token, agg)


def fg_expo(
    x: LossInputs, sigma: float = math.inf, beta: float = 0.0, kl: str = "k3", clip_eps: float = 0.2,
    agg: str = "seq-mean-token-mean",
) -> Tensor:
    """Group weight exp(−(p − ½)²/2σ²) on (clipped surrogate + β·p·KL), p = group accuracy."""
    per_token = clipped_surrogate(x.log_ratio.exp(), x.adv, clip_eps, clip_eps)
    if sigma == math.inf and not beta:
        return agg_tokens(x, per_token, agg)
    require(x, "fg_expo", "rewards")
    p = grouped(x, x.rewards.to(x.logp.dtype)).mean(-1).repeat_interleave(x.group_size).unsqueeze(-1)
    if beta:
        require(x, "fg_expo", "ref_logp")
        per_token = per_token + beta * p * kl_penalty(x.logp, x.ref_logp, kl)
    return agg_tokens(x, torch.exp(-((p - 0.5) ** 2) / (2 * sigma**2)) * per_token, agg)


def progrpo(x: LossInputs, alpha: float = 0.0, clip_eps: float = 0.2, agg: str = "seq-mean-token-mean") -> Tensor:
    """Advantages re-weighted by c_i/mean_group(c), c_i = exp(−α·mm(old_logp)_i)."""
    z = grouped(x, -alpha * masked_seq_mean(x.old_logp.detach(), x.mask))
    w = (x.group_size * torch.softmax(z, dim=-1)).reshape(-1, 1)  # c_i / mean_group(c), overflow-free
    return agg_tokens(x, clipped_surrogate(x.log_ratio.exp(), x.adv * w, clip_eps, clip_eps), agg)


def capo(x: LossInputs, threshold: float = math.inf, clip_eps: float = 0.2, agg: str = "seq-mean-token-mean") -> Tensor:
    """Clipped surrogate with tokens of curvature proxy |A|·(log r)² > ``threshold`` masked out."""
    keep = (x.adv.abs() * x.log_ratio.detach() ** 2) <= threshold
    per_token = clipped_surrogate(x.log_ratio.exp(), x.adv, clip_eps, clip_eps)
    return agg_tokens(x, torch.where(keep, per_token, torch.zeros((), dtype=per_token.dtype)), agg)


EXPERIMENTAL_LOSSES = {
    "dhpo": dhpo,
    "minpro": minpro,
    "etr": etr,
    "r2vpo": r2vpo,
    "d3s": d3s,
    "fg_expo": fg_expo,
    "progrpo": progrpo,
    "capo": capo,
}

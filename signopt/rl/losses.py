"""GRPO-family policy losses, selectable by name through ``LOSSES``.

Each loss is ``fn(x: LossInputs, **knobs) -> Tensor`` (a scalar to minimise), with
``r = exp(logp − old_logp)`` per token (log-ratio masked and clamped before exp), ``A`` the
advantage, ``mm`` the per-sequence masked token mean and ``sg`` stop-gradient. Sequence-level
terms are summed and divided by step-wide counts from ``x.norms``, so the gradient of a step does
not depend on how it is split into micro-batches (groups are never split).
Experimental reconstructions live in :mod:`signopt.rl.experimental_losses` and are included in
``LOSSES``; ``EXPERIMENTAL`` lists their names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .aggregation import check_choice, check_knobs, masked_seq_mean
from .experimental_losses import EXPERIMENTAL_LOSSES
from .kl import kl_low_var, kl_penalty
from .loss_inputs import LossInputs
from .surrogate import agg_tokens, clipped_surrogate, grouped, require, seq_sum


def grpo(
    x: LossInputs,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.0,
    kl: str = "k3",
    agg: str = "seq-mean-token-mean",
) -> Tensor:
    """GRPO: −min(rA, clip(r, 1 − ε, 1 + ε_high)A) + β·KL(π‖π_ref) per token, then ``agg``.

    Matches TRL ``trl/trainer/grpo_trainer.py`` ``GRPOTrainer._compute_loss`` (``loss_type="grpo"``,
    k3 KL; other ``agg``/``kl`` choices follow verl ``verl/trainer/ppo/core_algos.py``
    ``agg_loss``/``kl_penalty``). Departure: normalisers are those of the whole optimizer step
    (TRL divides each micro-batch's mean by the accumulation count)."""
    per_token = clipped_surrogate(x.log_ratio.exp(), x.adv, clip_eps, clip_eps if clip_eps_high is None else clip_eps_high)
    if beta:
        require(x, "grpo", "ref_logp")
        per_token = per_token + beta * kl_penalty(x.logp, x.ref_logp, kl)
    return agg_tokens(x, per_token, agg)


def dr_grpo(x: LossInputs, clip_eps: float = 0.2, agg: str = "seq-mean-token-sum-norm") -> Tensor:
    """Dr. GRPO: the clipped surrogate with A = r − mean, no KL, Σ/(B·L_max).

    Matches TRL ``GRPOTrainer._compute_loss`` (``loss_type="dr_grpo"``: Σ/(B·max_completion_length));
    L_max here is the step's completion width."""
    return agg_tokens(x, clipped_surrogate(x.log_ratio.exp(), x.adv, clip_eps, clip_eps), agg)


def dapo(x: LossInputs, clip_eps_low: float = 0.2, clip_eps_high: float = 0.28, agg: str = "token-mean") -> Tensor:
    """DAPO: clip-higher surrogate (ε_low, ε_high), token-mean over the whole step. Dynamic
    sampling and the overlong filter/penalty act on the data (:mod:`signopt.rl.shaping`).

    Matches TRL ``GRPOTrainer._compute_loss`` (``loss_type="dapo"``: Σ over the step's tokens /
    ``num_items_in_batch``) and verl ``agg_loss(loss_agg_mode="token-mean")``."""
    return agg_tokens(x, clipped_surrogate(x.log_ratio.exp(), x.adv, clip_eps_low, clip_eps_high), agg)


def gspo(x: LossInputs, clip_eps_low: float = 3e-4, clip_eps_high: float = 4e-4) -> Tensor:
    """GSPO: s = exp(mm(log r)); −min(sA, clip(s, 1−ε_l, 1+ε_h)A) per sequence, Σ_i / N_seqs.

    Matches TRL ``trl/trainer/grpo_trainer.py`` ``GRPOTrainer._compute_loss`` with
    ``importance_sampling_level="sequence"``, ``loss_type="grpo"``: a row without valid tokens
    (e.g. masked by the overlong filter) contributes 0 and still counts in N_seqs."""
    s = masked_seq_mean(x.log_ratio, x.mask).exp()
    return seq_sum(x, _zero_empty_rows(x, clipped_surrogate(s, x.advantages, clip_eps_low, clip_eps_high)))


def gspo_token(
    x: LossInputs, clip_eps_low: float = 3e-4, clip_eps_high: float = 4e-4, agg: str = "seq-mean-token-mean"
) -> Tensor:
    """GSPO-token: log s_t = min(sg(mm(log r)) + logp − sg(logp), 10); clipped surrogate per token.

    Matches verl ``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss_gspo`` (clamp of the
    log-ratio at 10, ``seq-mean-token-mean``)."""
    log_s = masked_seq_mean(x.log_ratio, x.mask).detach().unsqueeze(-1) + x.logp - x.logp.detach()
    log_s = torch.where(x.mask.bool(), log_s.clamp(max=10.0), torch.zeros((), dtype=log_s.dtype))
    return agg_tokens(x, clipped_surrogate(log_s.exp(), x.adv, clip_eps_low, clip_eps_high), agg)


def gmpo(x: LossInputs, clip_log: float = 0.4) -> Tensor:
    """GMPO: ρ_i = exp(mm(sgn(A)·min(sgn(A)·log r, clip(sgn(A)·log r, ±c)))); −A_i·ρ_i, Σ_i / N_seqs.

    Matches the GMPO release (``callsys/GMPO``, ``train_zero_math_gmpo.py``, ``ZeroMathLearner``):
    the token log-ratios are clipped sign-aware in log space and averaged per sequence (a
    geometric mean of ratios). A row without valid tokens contributes 0
    (TRL's convention for empty rows; the release never sees one)."""
    sgn = torch.sign(x.adv)
    signed = sgn * x.log_ratio
    clipped = sgn * torch.minimum(signed, signed.clamp(-clip_log, clip_log))
    rho = masked_seq_mean(clipped, x.mask).exp()
    return seq_sum(x, _zero_empty_rows(x, -x.advantages * rho))


def _zero_empty_rows(x: LossInputs, per_seq: Tensor) -> Tensor:
    """``per_seq[B]`` with rows that have no valid token set to 0."""
    return torch.where(x.mask.any(-1), per_seq, torch.zeros((), dtype=per_seq.dtype))


CISPO_CLIP_MODES = ("max", "symmetric")


def cispo(
    x: LossInputs,
    clip_mode: str = "max",
    eps_max: float = 5.0,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    agg: str = "token-mean",
) -> Tensor:
    """CISPO: −sg(w)·A·logp, w = min(r, ε_max) (``clip_mode='max'``) or clamp(r, 1−ε_l, 1+ε_h)
    (``clip_mode='symmetric'``).

    ``max`` matches TRL ``GRPOTrainer._compute_loss`` (``loss_type="cispo"``, ``clamp(r,
    max=epsilon_high).detach()``, token-mean); ``symmetric`` is the two-sided weight clip used by
    verl-style recipes."""
    check_choice("clip_mode", clip_mode, CISPO_CLIP_MODES)
    r = x.log_ratio.exp()
    w = r.clamp(max=eps_max) if clip_mode == "max" else r.clamp(1 - clip_eps_low, 1 + clip_eps_high)
    return agg_tokens(x, -w.detach() * x.adv * x.logp, agg)


def sapo(x: LossInputs, tau_pos: float = 1.0, tau_neg: float = 1.05, agg: str = "seq-mean-token-mean") -> Tensor:
    """SAPO: −σ(τ(r − 1))·(4/τ)·A with τ = τ₊ for A > 0 and τ₋ otherwise (a soft clip).

    Matches TRL ``GRPOTrainer._compute_loss`` (``loss_type="sapo"``, ``sapo_temperature_pos=1.0``,
    ``sapo_temperature_neg=1.05``, seq-mean-token-mean)."""
    dt = x.logp.dtype
    tau = torch.where(x.adv > 0, torch.tensor(tau_pos, dtype=dt), torch.tensor(tau_neg, dtype=dt))
    gate = torch.sigmoid(tau * (x.log_ratio.exp() - 1)) * (4.0 / tau)
    return agg_tokens(x, -gate * x.adv, agg)


def vanilla_dual_clip(x: LossInputs, clip_eps: float = 0.2, clip_ratio_c: float = 3.0, agg: str = "token-mean") -> Tensor:
    """Dual-clip PPO: the PPO-clip loss, capped at −A·c for A < 0.

    Matches verl ``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss_vanilla``
    (``clip_ratio_c=3.0``)."""
    if clip_ratio_c <= 1:
        raise ValueError(f"clip_ratio_c={clip_ratio_c} must be > 1")
    ppo = clipped_surrogate(x.log_ratio.exp(), x.adv, clip_eps, clip_eps)
    per_token = torch.where(x.adv < 0, torch.minimum(ppo, -x.adv * clip_ratio_c), ppo)
    return agg_tokens(x, per_token, agg)


def real(x: LossInputs, tau: float = 0.5) -> Tensor:
    """REAL: s_i = mm(log r)_i/τ; Σ_q [log(1 + Σ_neg e^s) + log(1 + Σ_pos e^{−s})] / N_q.

    pos/neg are the rollouts above/below their group's mean reward; a group without both
    contributes 0 but, as in REAL's release (``Red-RL/REAL``, its verl policy loss, normalised by
    ``num_questions``), N_q counts every question (group) of the optimizer step."""
    require(x, "real", "rewards")
    s = grouped(x, masked_seq_mean(x.log_ratio, x.mask) / tau)
    r = grouped(x, x.rewards.to(s.dtype))
    pos, neg = r > r.mean(-1, keepdim=True), r < r.mean(-1, keepdim=True)
    mixed = pos.any(-1) & neg.any(-1)
    ninf = torch.tensor(float("-inf"), dtype=s.dtype)
    zero = torch.zeros(s.shape[0], 1, dtype=s.dtype)
    term_neg = torch.logsumexp(torch.cat([zero, torch.where(neg, s, ninf)], -1), -1)
    term_pos = torch.logsumexp(torch.cat([zero, torch.where(pos, -s, ninf)], -1), -1)
    per_group = torch.where(mixed, term_neg + term_pos, torch.zeros((), dtype=s.dtype))
    return per_group.sum() / max(x.norm("num_groups"), 1.0)


def gtpo(
    x: LossInputs,
    conflict_boost: float = 2.0,
    entropy_threshold: float = 0.7,
    entropy_coef: float = 0.1,
    is_ratio: bool = False,
) -> Tensor:
    """GTPO: Σ_i mm(−A'_i·δ_it·r_it) / max(n_i, 1), divided by N_seqs.

    Conflict tokens of a rollout with A ≠ 0: the leading run of positions t = 0, 1, … whose token
    also sits at position t of an A > 0 and of an A < 0 rollout of the group (a shared prefix), and
    likewise counted from each rollout's last valid token backwards (a shared suffix; masks are
    right-padded). δ = δ_prefix·δ_suffix with each factor ``conflict_boost`` on a conflict token of
    an A > 0 rollout, 0 on one of an A < 0 rollout, 1 elsewhere (and on A = 0 rollouts); n_i = the
    number of conflict tokens of rollout i (prefix ∪ suffix). Entropy shaping on every rollout:
    A' = A − c·H̄ if H̄ ≤ threshold else 0 (H̄ = mean token entropy of the rollout; conflicts use
    the sign of A). r = exp(logp − sg(logp)) (value 1), or exp(log r) with ``is_ratio=True``.

    Matches ``winstonsmith1897/GTPO`` ``gtpo/gtpo_training.py`` (commits 4a23520, f450da2; the
    same in ``algorithms/gtpo_training.py``): ``build_conflict_mask``, ``gtpo_compute_loss`` and
    the shaping in ``UnslothEfficientGTPO.forward`` (``W_RAW=2.0``, ``ENT_THRESHOLD=0.7``,
    ``ENT_SCALE=0.1``; its ``beta`` only feeds a logged KL). Departures: the release sums the
    rollouts of a micro-batch (a factor of the micro-batch's rollout count over this mean, fixed by
    the batch layout); ``is_ratio`` is an addition for rollouts reused over ``inner_epochs`` > 1
    (the release is on-policy only)."""
    require(x, "gtpo", "tokens", "entropy")
    m = x.mask.bool()
    T = m.shape[1]
    pos, neg = x.advantages > 0, x.advantages < 0
    length = m.sum(-1, keepdim=True)
    t = torch.arange(T, device=m.device)
    src = (length - 1 - t).clamp(min=0)  # position of the k-th token from the end
    in_len = t < length
    tok = torch.where(m, x.tokens, -1)

    def leading_conflicts(tk: Tensor) -> Tensor:
        g = grouped(x, tk)
        same = (g.unsqueeze(2) == g.unsqueeze(1)) & (g.unsqueeze(1) >= 0)  # [n, i, j, T]
        in_pos = (same & grouped(x, pos)[:, None, :, None]).any(2)
        in_neg = (same & grouped(x, neg)[:, None, :, None]).any(2)
        raw = (in_pos & in_neg).reshape(tk.shape) & (tk >= 0) & (pos | neg).unsqueeze(-1)
        return torch.cumprod(raw.long(), -1).bool()

    prefix = leading_conflicts(tok) & m
    suffix_rev = leading_conflicts(torch.where(in_len, tok.gather(-1, src), -1))
    suffix = suffix_rev.gather(-1, src) & in_len & m
    one = torch.ones((), dtype=x.logp.dtype)
    side = torch.where(pos, torch.tensor(conflict_boost, dtype=one.dtype), 0.0).unsqueeze(-1)
    delta = torch.where(prefix, side, one) * torch.where(suffix, side, one)
    n_conf = ((prefix | suffix) & m).sum(-1).clamp(min=1)
    h_bar = masked_seq_mean(x.entropy.to(x.logp.dtype), x.mask)
    adv = torch.where(h_bar <= entropy_threshold, x.advantages - entropy_coef * h_bar, torch.zeros_like(h_bar))
    zero = torch.zeros((), dtype=x.logp.dtype)
    r = (x.log_ratio if is_ratio else torch.where(m, x.logp - x.logp.detach(), zero)).exp()
    per_seq = masked_seq_mean(-adv.unsqueeze(-1) * delta * r, x.mask) / n_conf
    return seq_sum(x, per_seq)


def nft(x: LossInputs, scale: float = 1000.0, clamp_negative: float = 1.0, neg_weight: float = 1.0) -> Tensor:
    """NFT (token ratios, ``normalize=1``), binary rewards, r̂ = clamp(group accuracy, 0.02, 0.98),
    R = exp(min(log r, 10)); per token (1 − r̂)·L with
    correct L = −log R, wrong L = −w·log(cpg((1 − r̂R)/(1 − r̂), ``clamp_negative``));
    Σ over tokens / ``scale``, summed over sequences.

    ``cpg(v, c)`` (``clamp_preserve_grad``) has the value max(v, c) and the gradient of v.
    Matches ``NVlabs/NFT`` ``dp_actor.py`` ``DataParallelPPOActor.update_policy`` (``ratio_type=
    "token"``, its shipped ``clamp_negative=1.0``, ``neg_weight=1.0``). Departure: NFT removes
    groups whose rollouts are all right or all wrong before the loss; here they stay in the batch
    and contribute 0."""
    require(x, "nft", "rewards")
    if clamp_negative <= 0:
        raise ValueError(f"clamp_negative={clamp_negative} must be > 0")
    rw = x.rewards.to(x.logp.dtype)
    if ((rw != 0) & (rw != 1)).any():
        raise ValueError("loss='nft' needs binary rewards (0 or 1)")
    acc = grouped(x, rw).mean(-1, keepdim=True)
    mixed = ((acc > 0) & (acc < 1)).expand(-1, x.group_size).reshape(-1, 1)
    r_hat = acc.clamp(0.02, 0.98).expand(-1, x.group_size).reshape(-1, 1)
    ratio = x.log_ratio.clamp(max=10.0).exp()
    proxy = (1 - r_hat * ratio) / (1 - r_hat)
    proxy = proxy + (proxy.clamp(min=clamp_negative) - proxy).detach()
    per_token = (1 - r_hat) * torch.where(rw.unsqueeze(-1) > 0, -torch.log(ratio), -neg_weight * torch.log(proxy))
    keep = x.mask.bool() & mixed
    return torch.where(keep, per_token, torch.zeros((), dtype=per_token.dtype)).sum() / scale


def trpa(
    x: LossInputs, beta: float = 0.1, anisotropy: float = 2.5, top_reward: float = 1.0, kl_coef: float = 1e-3
) -> Tensor:
    """TRPA: x_i = mm(logp − ref_logp); over in-group pairs r_w > r_l,
    Σ −log σ(a_w·β(x_w − x_l)) / #pairs with a_w = ``anisotropy`` when r_w ≥ ``top_reward`` (the
    top preference level) else 1; + ``kl_coef``·token-mean low_var_kl(π‖π_old). When the step has
    no pair: Σ_i −log σ(±x_i) / N_seqs (+ for r_i ≥ ``top_reward``, − otherwise).

    Matches ``XueruiSu/Trust-Region-Preference-Approximation`` ``verl/trainer/ppo/core_algos.py``
    ``compute_pairwise_policy_loss`` (commit c6b46aa; pairs between preference levels, level 1 = a
    correct answer in ``verl/utils/reward_score/kk.py``, ``anisotropy`` inside the sigmoid, the
    pair-less fallback) and ``verl/workers/actor/dp_actor.py`` ``DataParallelPPOActor.update_policy``
    (commit 88147e4) with
    ``main_TRPA.sh``'s settings (``trpa_beta=0.1``, ``trpa_anisotropy=2.5``,
    ``kl_loss_type=low_var_kl``, ``tr_kl_loss_coef=0.001``, ``use_sqrt_trkl=False``, no entropy
    bonus; the reference KL is logged, not added). Departures: preference levels are the
    rollouts' rewards (``top_reward=1.0`` is a correct answer in :mod:`signopt.rl.tasks`); the
    means run over the step's pairs, tokens and rollouts, not each micro-batch's, and groups are
    never split across micro-batches."""
    require(x, "trpa", "ref_logp", "rewards")
    dt = x.logp.dtype
    d = torch.where(x.mask.bool(), x.logp - x.ref_logp, torch.zeros((), dtype=dt))
    s = masked_seq_mean(d, x.mask)
    top = x.rewards.to(dt) >= top_reward
    kl = kl_coef * agg_tokens(x, kl_low_var(x.logp, x.old_logp), "token-mean")
    if x.norm("num_pairs") == 0:
        sign = torch.where(top, torch.ones((), dtype=dt), -1.0)
        return seq_sum(x, -F.logsigmoid(sign * s)) + kl
    sg, r = grouped(x, s), grouped(x, x.rewards.to(dt))
    win = r.unsqueeze(-1) > r.unsqueeze(-2)  # [n, w, l]
    scale = beta * torch.where(grouped(x, top), torch.tensor(anisotropy, dtype=dt), 1.0).unsqueeze(-1)
    pair = -F.logsigmoid(scale * (sg.unsqueeze(-1) - sg.unsqueeze(-2)))
    return torch.where(win, pair, torch.zeros((), dtype=dt)).sum() / x.norm("num_pairs") + kl


def riskpo(x: LossInputs, clip_eps: float = 0.2, agg: str = "token-mean") -> Tensor:
    """RiskPO: the PPO-clip token loss on mixed-VaR bundle advantages (advantage ``riskpo``).

    From the paper's description; no released code was compared."""
    return agg_tokens(x, clipped_surrogate(x.log_ratio.exp(), x.adv, clip_eps, clip_eps), agg)


def hapo(
    x: LossInputs, clip_eps_low: float = 0.2, clip_eps_high: float = 0.28, alpha: float = 1.0, agg: str = "token-mean"
) -> Tensor:
    """HAPO: per-token clip bounds from ĥ = (log H − μ)/σ (step-wide log-entropy statistics):
    ε_low·(1 − αĥ) when ĥ ≤ 0, ε_high·(1 + αĥ) when ĥ > 0, the other bound unchanged.

    From the paper's description; no released code was compared."""
    require(x, "hapo", "entropy")
    log_h = torch.log(x.entropy.to(x.logp.dtype).clamp(min=1e-12))
    has_stats = "log_entropy_std" in x.norms or bool(x.mask.any())
    sd = x.norm("log_entropy_std") if has_stats else 0.0
    h = (log_h - x.norm("log_entropy_mean")) / sd if sd > 0 else torch.zeros_like(log_h)
    eps_low = torch.where(h <= 0, clip_eps_low * (1 - alpha * h), clip_eps_low).detach()
    eps_high = torch.where(h > 0, clip_eps_high * (1 + alpha * h), clip_eps_high).detach()
    return agg_tokens(x, clipped_surrogate(x.log_ratio.exp(), x.adv, eps_low, eps_high), agg)


LOSSES = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "dapo": dapo,
    "gspo": gspo,
    "gspo_token": gspo_token,
    "gmpo": gmpo,
    "cispo": cispo,
    "sapo": sapo,
    "vanilla_dual_clip": vanilla_dual_clip,
    "real": real,
    "gtpo": gtpo,
    "nft": nft,
    "trpa": trpa,
    "riskpo": riskpo,
    "hapo": hapo,
    **EXPERIMENTAL_LOSSES,
}
EXPERIMENTAL = tuple(EXPERIMENTAL_LOSSES)

# Advantage estimator each loss is meant to be paired with (``grpo`` otherwise).
DEFAULT_ADVANTAGE = {"dr_grpo": "dr_grpo", "riskpo": "riskpo"}


def compute_loss(name: str, x: LossInputs, **knobs) -> Tensor:
    """Loss ``name`` (one of ``LOSSES``) on ``x`` with keyword ``knobs``."""
    check_choice("loss", name, LOSSES)
    check_knobs(f"loss={name!r}", LOSSES[name], knobs)
    return LOSSES[name](x, **knobs)

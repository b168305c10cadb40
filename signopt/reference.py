"""The torch reference of every update rule: the single statement of the math.

All arithmetic is fp32 (fp64 for fp64 parameters: :func:`compute_dtype`) with plain ``mul``/``add``/``sub``/``div`` in the order written (no
``lerp``/``addcmul``/``add(alpha=)``, which round differently or fuse), so that the C++/CUDA and
Triton kernels can reproduce it bit for bit. One parameter tensor ``p`` with gradient ``g``:

prologue::

    g <- g * inv_scale                  (GradScaler, when given)
    g <- -g                             (maximize)
    bad = not isfinite(g);  g <- 0 where bad
    g <- g + l2 * p                     (wd_mode='l2')

direction ``u`` (per family)::

    sign:        u = sign(g)
    signum:      m <- m*beta + g*(1-beta);            u = sign(m)
    lion:        c = m*beta1 + g*(1-beta1);           u = grad kappa(c)   (kappa 'l1' = sign)
                 m <- m*beta2 + g*(1-beta2)
    stochastic:  d = base direction (sgd: g;  momentum: m <- m*beta + g*(1-beta), d = m;
                 lion: d = c as above;  adamw: m, v EMAs, d = (m/bc1) / (sqrt(v/bc2) + eps))
                 G <- fmax(G*gamma, reduce |src|)     src = d or g, reduced per element/row/block/tensor
                 u = S_G(d):  +1 if U < (1 + d/G)/2 else -1;  0 where d = G = 0
                 with U = (word >> 8) * 2**-24, word = the element's random word for the stochastic
                 sign (philox.element_word of its full-tensor index, random bits v2)

cautious (optional)::

    keep = u*g > 0;  u <- keep ? u * (numel / (count(keep) + 1)) : 0

epilogue::

    p <- p*decay - lr*u                 (decay = 1 - lr*wd, 1 - wd*lr/lr0, or 1)
    p, state unchanged where bad (non-finite policy); everything unchanged if found_inf

Reductions (reducing kappa, row/block/tensor envelopes, cautious counts) see 0 at bad
elements; norms accumulate in fp64 (see :mod:`signopt.kappa`).

step statistics (``step_stats=True``, :func:`step_statistics`)::

    d = p_new - p (before rounding into p's dtype), 0 where bad;  sq = sum of d*d in fp64
    s = sign(u) after cautious (+1, -1, 0; 0 for NaN);  flips = count(s * s_prev < 0 and not bad)
    s_prev <- s where not bad;  absmax[slot] = max |new state| (NaN if any is NaN)
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import kappa as kappa_registry
from .declaration import RANDOM_PURPOSES, STEP_STATS
from .philox import element_word, uniform_from_word
from .rule import UpdateRule
from .scalars import GroupScalars


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a parameter of real ``dtype`` is updated in: fp64 for fp64, else fp32. State is
    read as fp32 and the scalars are the same fp32 values for every dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def ema(x: Tensor, new: Tensor, beta: float, one_minus_beta: float) -> Tensor:
    """``x*beta + new*(1-beta)`` with two roundings of products and one of the sum."""
    return x * beta + new * one_minus_beta


def sqrt_rn(x: Tensor) -> Tensor:
    """Correctly rounded square root in ``x``'s dtype: fp32 as IEEE ``sqrtf``, CUDA ``sqrt.rn``,
    Triton ``sqrt_rn``; fp64 as ``torch.sqrt`` (IEEE ``sqrt``).

    ``torch.sqrt`` on fp32 CPU tensors may go through MKL VML and miss the correctly rounded
    result by 1 ulp in a fraction of elements; the fp64 square root rounded once to fp32 is
    correctly rounded (53 >= 2*24 + 2 bits, so the double rounding is innocuous).
    """
    if x.dtype == torch.float64:
        return torch.sqrt(x)
    return torch.sqrt(x.double()).float()


def stochastic_sign(v: Tensor, envelope: Tensor, uniform: Tensor) -> Tensor:
    """``S_G(v)``: +1 where ``U < (1 + v/G)/2``, else -1; 0 where ``v == G == 0``."""
    threshold = (1.0 + v / envelope) * 0.5
    one = torch.ones((), dtype=threshold.dtype, device=threshold.device)
    s = torch.where(uniform < threshold, one, -one)
    return torch.where((v == 0) & (envelope == 0), torch.zeros_like(s), s)


def reduce_envelope(rule: UpdateRule, src: Tensor) -> Tensor:
    """Max of ``src`` (non-negative, finite) per envelope cell, shaped like ``G``."""
    if rule.envelope == "element":
        return src
    if rule.envelope == "row":
        return kappa_registry.rows_view(src).amax(dim=1)
    if rule.envelope == "tensor":
        return src.amax().reshape(1)
    flat = src.reshape(-1)
    bs = rule.envelope_block
    padded = torch.nn.functional.pad(flat, (0, (-flat.numel()) % bs))
    return padded.reshape(-1, bs).amax(dim=1)


def expand_envelope(rule: UpdateRule, env: Tensor, shape: torch.Size) -> Tensor:
    """``G`` broadcast back to one value per element of a tensor of ``shape``."""
    if rule.envelope == "element":
        return env
    if rule.envelope == "row":
        rows = kappa_registry.rows_view(torch.empty(shape, device="meta"))
        return env.reshape(-1, 1).expand(rows.shape).reshape(shape)
    if rule.envelope == "tensor":
        return env.reshape(()).expand(shape)  # also for 0-dim tensors
    n = 1
    for s in shape:
        n *= s
    return env.repeat_interleave(rule.envelope_block)[:n].reshape(shape)


def _base_direction(rule: UpdateRule, g: Tensor, st: dict[str, Tensor], sc: GroupScalars,
                    bias: tuple[float, float] | None, bad: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The stochastic rule's base direction ``d`` and its updated moment state."""
    new: dict[str, Tensor] = {}
    if rule.base == "sgd":
        return g, new
    if rule.base == "momentum":
        new["m"] = torch.where(bad, st["m"], ema(st["m"], g, sc.beta1, sc.omb1))
        return new["m"], new
    if rule.base == "lion":
        c = torch.where(bad, torch.zeros_like(g), ema(st["m"], g, sc.beta1, sc.omb1))
        new["m"] = torch.where(bad, st["m"], ema(st["m"], g, sc.beta2, sc.omb2))
        return c, new
    assert bias is not None
    new["m"] = torch.where(bad, st["m"], ema(st["m"], g, sc.beta1, sc.omb1))
    new["v"] = torch.where(bad, st["v"], ema(st["v"], g * g, sc.beta2, sc.omb2))
    d = (new["m"] / bias[0]) / (sqrt_rn(new["v"] / bias[1]) + sc.eps)
    return torch.where(bad, torch.zeros_like(d), d), new


def direction(rule: UpdateRule, g: Tensor, st: dict[str, Tensor], sc: GroupScalars,
              bias: tuple[float, float] | None, key: tuple[int, int] | None,
              indices: Tensor | None, bad: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The update direction ``u`` and the new fp32 state (see the module docstring)."""
    if rule.family == "sign":
        return torch.sign(g), {}
    if rule.family == "signum":
        m = torch.where(bad, st["m"], ema(st["m"], g, sc.beta1, sc.omb1))
        return torch.sign(m), {"m": m}
    if rule.family == "lion":
        c = torch.where(bad, torch.zeros_like(g), ema(st["m"], g, sc.beta1, sc.omb1))
        m = torch.where(bad, st["m"], ema(st["m"], g, sc.beta2, sc.omb2))
        u = kappa_registry.grad_kappa(rule.kappa, c, delta=sc.huber_delta, p=sc.lp_p,
                                      fn=rule.kappa_fn)
        return u, {"m": m}
    d, new = _base_direction(rule, g, st, sc, bias, bad)
    src = d.abs() if rule.envelope_source == "direction" else g.abs()
    env = torch.fmax(st["G"] * sc.envelope_decay, reduce_envelope(rule, src))
    if rule.envelope == "element":
        env = torch.where(bad, st["G"], env)
    new["G"] = env
    assert key is not None and indices is not None
    uniform = uniform_from_word(element_word(key, indices, RANDOM_PURPOSES["sign"])).reshape(g.shape)
    return stochastic_sign(d, expand_envelope(rule, env, g.shape), uniform), new


def cautious_mask(u: Tensor, g: Tensor) -> Tensor:
    """Keep coordinates where ``u`` agrees in sign with ``g``; rescale by ``numel/(kept+1)``."""
    keep = (u * g) > 0
    kept = keep.sum()
    scale = torch.tensor(float(u.numel()), dtype=u.dtype, device=u.device) / (kept + 1).to(u.dtype)
    return torch.where(keep, u * scale, torch.zeros_like(u))


def update(rule: UpdateRule, p: Tensor, grad: Tensor, st: dict[str, Tensor], sc: GroupScalars,
           bias: tuple[float, float] | None = None, key: tuple[int, int] | None = None,
           indices: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
    """One step of ``rule`` in ``p``'s dtype: returns ``(new p, new state, bad mask, u)``, ``u``
    the direction after cautious masking.

    ``p`` is in its compute dtype (:func:`compute_dtype`), the values of ``st`` are fp32 tensors
    (state already decoded); ``grad`` has any floating dtype. Nothing is written: the caller
    stores the results.
    """
    g = grad.to(p.dtype)
    if sc.inv_scale is not None:
        g = g * sc.inv_scale
    if rule.maximize:
        g = -g
    bad = ~torch.isfinite(g)
    g = torch.where(bad, torch.zeros_like(g), g)
    if sc.l2 != 0.0:
        g = g + sc.l2 * p
    u, new_state = direction(rule, g, st, sc, bias, key, indices, bad)
    if rule.cautious:
        u = cautious_mask(u, g)
    p_new = p * sc.decay - sc.lr * u
    p_new = torch.where(bad, p, p_new)
    if sc.found_inf is not None:
        skip = sc.found_inf.to(p.device) > 0
        p_new = torch.where(skip, p, p_new)
        new_state = {k: torch.where(skip.to(v.device), st[k], v) for k, v in new_state.items()}
    return p_new, new_state, bad, u


def step_statistics(p: Tensor, p_new: Tensor, u: Tensor, bad: Tensor, new_state: dict[str, Tensor],
                    prev_sign: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor]:
    """One tensor's step statistics from :func:`update`'s results (``p`` and ``p_new`` in the
    compute dtype, ``prev_sign`` int8 of ``p``'s shape): ``(sum of squared updates (fp64), sign
    reversals (int64), {slot: max |new state|} (NaN-propagating), the new sign tensor)``."""
    d = torch.where(bad, torch.zeros_like(p_new), p_new - p).double()
    sign = (u > 0).to(torch.int8) - (u < 0).to(torch.int8)
    flips = ((sign * prev_sign < 0) & ~bad).sum()
    absmax = {k: v.abs().amax() for k, v in new_state.items()}
    return (d * d).sum(), flips, absmax, torch.where(bad, prev_sign, sign)


def skipped_statistics(stats: Tensor, found_inf: Tensor) -> Tensor:
    """A group's :data:`~signopt.declaration.STEP_STATS` values where ``found_inf > 0`` skipped
    the step (nothing changed): no update, no reversal, the non-finite count kept, NaN maxima
    (the state is not read)."""
    kept = torch.tensor([n == "nonfinite" for n in STEP_STATS], device=stats.device)
    skipped = torch.tensor([math.nan if n.endswith("_absmax") else 0.0 for n in STEP_STATS],
                           dtype=stats.dtype, device=stats.device)
    skip = found_inf.to(stats.device).reshape(-1)[:1] > 0
    return torch.where(skip & ~kept, skipped, stats)

"""The public sign optimizers. Each is a ``torch.optim.Optimizer``; the math is in
:mod:`signopt.reference`, the options shared by all are:

* ``weight_decay`` with ``wd_mode``: ``"decoupled"`` (default, Lion's ``p <- p*(1 - lr*wd)``
  before the update), ``"independent"`` (``p <- p*(1 - wd*lr/lr0)``, lr0 = the group's initial
  lr; lion-pytorch's ``decoupled_weight_decay=True``), ``"l2"`` (``g <- g + wd*p``).
* ``maximize``; ``cautious`` (keep coordinates whose update agrees in sign with ``g``,
  rescaled by ``numel/(kept+1)``); ``backend`` (``"auto"``, ``"torch"``, ``"cpp"``, ``"triton"``).
* ``state_dtype``: ``"fp32"``, ``"bf16"``, ``"fp8_e4m3"``, ``"fp8_e5m2"`` (block-scaled with
  ``state_block`` elements per fp32 scale, default 256), ``"mxfp8_e4m3"``, ``"mxfp8_e5m2"`` (OCP
  Microscaling: the same codes with one power-of-two E8M0 scale per ``state_block`` elements,
  default 32, a power of two up to 256); tensors under ``fp8_min_numel`` elements keep fp32;
  ``"fp4_e2m1"`` (MXFP4: E2M1 codes, two a byte, one E8M0 scale per block, default 32;
  ``state_scale``: None or ``"e8m0"``); ``state_block=None`` is the format's default; see
  :mod:`signopt.state_format`; ``state_rounding`` and ``param_rounding``: ``"nearest"`` or
  ``"stochastic"`` (the latter keeps the expected update of bf16/fp16 parameters when the step
  is below half an ulp); ``seed`` keys every random bit (default: drawn from torch's generator).
* Non-finite gradients: an element whose gradient is NaN/inf keeps its parameter and state
  for that step; ``opt.nonfinite_count()`` reports how many there were.
* ``step_stats`` (default False; for the whole optimizer, like ``backend``): with True,
  ``opt.step_stats()`` returns each group's update RMS, fraction of reversed update signs,
  non-finite gradient count and state absmax of the last step, computed inside the step's own
  pass (one int8 per parameter element of extra memory); see docs/optimizers.md.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from torch import Tensor

from .optimizer import SignOptimizer
from .rule import _beta

LR = float | Tensor

SHARED_DEFAULTS: dict[str, Any] = dict(
    weight_decay=0.0, wd_mode="decoupled", maximize=False, cautious=False, state_dtype="fp32",
    state_rounding="nearest", param_rounding="nearest", state_block=None, state_scale=None, fp8_min_numel=4096,
    seed=None,
)


OPTIMIZER_OPTIONS = {"backend": "auto", "step_stats": False}
"""Options of the whole optimizer (not of a param group), with their defaults."""


def _defaults(lr: LR, options: dict[str, Any], **rule_options: Any) -> dict[str, Any]:
    """Group defaults: ``lr``, the shared options (unknown names rejected) and the rule's own."""
    unknown = sorted(set(options) - set(SHARED_DEFAULTS) - set(OPTIMIZER_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected option(s) {unknown}; shared options are "
                        f"{sorted(SHARED_DEFAULTS) + sorted(OPTIMIZER_OPTIONS)}")
    d = {**SHARED_DEFAULTS, **{k: v for k, v in options.items() if k not in OPTIMIZER_OPTIONS}}
    d["lr"] = lr
    d.update(rule_options)
    return d


def _shell(options: dict[str, Any]) -> dict[str, Any]:
    """The optimizer-wide options of ``options`` (:data:`OPTIMIZER_OPTIONS`) for ``SignOptimizer``."""
    return {k: options.get(k, default) for k, default in OPTIMIZER_OPTIONS.items()}


class SignSGD(SignOptimizer):
    """signSGD (Bernstein et al. 2018): ``p <- p - lr*sign(g)``. Keeps no state."""

    family = "sign"

    def __init__(self, params: Iterable, lr: LR = 1e-4, **options: Any) -> None:
        super().__init__(params, _defaults(lr, options), **_shell(options))


class Signum(SignOptimizer):
    """Signum: ``m <- beta*m + (1-beta)*g;  p <- p - lr*sign(m)`` (m0 = 0, m persists)."""

    family = "signum"

    def __init__(self, params: Iterable, lr: LR = 1e-4, momentum: float = 0.9, **options: Any) -> None:
        super().__init__(params, _defaults(lr, options, momentum=momentum),
                         **_shell(options))


class LionKappa(SignOptimizer):
    """Lion-kappa (arXiv 2310.05898): Lion with ``sign`` replaced by ``grad kappa``.

    ``p <- p*decay;  c = beta1*m + (1-beta1)*g;  p <- p - lr*grad_kappa(c);
    m <- beta2*m + (1-beta2)*g``. ``kappa`` is a name from :mod:`signopt.kappa` (``"l1"``
    = Lion, ``"l2sq"``, ``"huber"`` with ``huber_delta``, ``"l2"``, ``"row_l2"``, ``"lp"``
    with ``p``) or a callable ``c -> grad kappa(c)`` (torch backend only).
    """

    family = "lion"

    def __init__(self, params: Iterable, lr: LR = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, kappa: str | Callable[[Tensor], Tensor] = "l1", *,
                 huber_delta: float = 1.0, p: float = 2.0, **options: Any) -> None:
        super().__init__(params, _defaults(lr, {**options, "weight_decay": weight_decay},
                                           betas=tuple(betas), kappa=kappa,
                                           huber_delta=huber_delta, p=p),
                         **_shell(options))


class Lion(LionKappa):
    """Lion (Chen et al. 2023): ``p <- p*(1 - lr*wd);  p <- p - lr*sign(beta1*m + (1-beta1)*g);
    m <- beta2*m + (1-beta2)*g``. Defaults lr=1e-4, betas=(0.9, 0.99), weight_decay=0."""

    def __init__(self, params: Iterable, lr: LR = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, **options: Any) -> None:
        super().__init__(params, lr, betas, weight_decay, "l1", **options)


class SignConversion(SignOptimizer):
    """Unbiased stochastic-sign version of a base direction ``d`` (arXiv 2604.15416).

    ``B <- max(B*envelope_decay, |src|)`` reduced per ``envelope`` cell (``"element"``,
    ``"row"``, ``"block"`` of ``envelope_block`` flat elements, ``"tensor"``), with
    ``src = d`` (``envelope_source="direction"``) or ``g`` (``"grad"``);
    ``p <- p*decay - lr*S_B(d)`` where ``S_B(d) = +1`` with probability ``(1 + d/B)/2``, else
    ``-1``, so ``E[dp] = -lr*d/B``. Bases: ``"sgd"`` (d = g), ``"momentum"`` (EMA with
    ``betas[0]``), ``"adamw"`` (bias-corrected ``m/(sqrt(v)+eps)``), ``"lion"`` (Lion's c).
    Random bits: Philox keyed by ``seed``, the step and the tensor index (bitwise reproducible).
    Row/block/tensor envelopes are stored in fp32 whatever ``state_dtype`` is.
    """

    family = "stochastic"

    def __init__(self, params: Iterable, lr: LR = 1e-4, base: str = "adamw",
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *,
                 envelope: str = "element", envelope_source: str = "direction",
                 envelope_decay: float = 1.0, envelope_block: int = 256, **options: Any) -> None:
        super().__init__(params, _defaults(lr, options, base=base, betas=tuple(betas), eps=eps,
                                           envelope=envelope, envelope_source=envelope_source,
                                           envelope_decay=envelope_decay,
                                           envelope_block=envelope_block),
                         **_shell(options))


class StoSignSGD(SignConversion):
    """StoSignSGD: ``m <- beta*m + (1-beta)*g;  G <- max(G, |m|);  p <- p*decay - lr*S_G(m)``.

    The paper's full text was not readable; its unknowns are options with these defaults:
    ``beta=0.9``; envelope per ``"element"``; envelope source ``"direction"`` (|m|; ``"grad"``
    uses |g|); ``envelope_decay=1`` (G never decreases). Step 1 equals Signum's.
    """

    def __init__(self, params: Iterable, lr: LR = 1e-4, beta: float = 0.9, *,
                 envelope: str = "element", envelope_source: str = "direction",
                 envelope_decay: float = 1.0, envelope_block: int = 256, **options: Any) -> None:
        _beta("beta", beta)  # name the caller's option, not the betas pair it becomes
        super().__init__(params, lr, "momentum", (beta, beta), envelope=envelope,
                         envelope_source=envelope_source, envelope_decay=envelope_decay,
                         envelope_block=envelope_block, **options)

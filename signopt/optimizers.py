"""The public sign optimizers. Each is a ``torch.optim.Optimizer``; the math is in
:mod:`signopt.reference`, the options shared by all are:

* ``weight_decay`` with ``wd_mode``: ``"decoupled"`` (default, Lion's ``p <- p*(1 - lr*wd)``
  before the update), ``"independent"`` (``p <- p*(1 - wd*lr/lr0)``, lr0 = the group's initial
  lr; lion-pytorch's ``decoupled_weight_decay=True``), ``"l2"`` (``g <- g + wd*p``).
* ``maximize``; ``cautious`` (keep coordinates whose update agrees in sign with ``g``,
  rescaled by ``numel/(kept+1)``); ``state_dtype`` (``"fp32"`` or ``"bf16"``);
  ``backend`` (``"auto"``, ``"torch"``, ``"cpp"``, ``"triton"``).
* Non-finite gradients: an element whose gradient is NaN/inf keeps its parameter and state
  for that step; ``opt.nonfinite_count()`` reports how many there were.
"""
from __future__ import annotations

from typing import Callable, Iterable

from torch import Tensor

from .optimizer import SignOptimizer

LR = float | Tensor


def _shared(lr: LR, weight_decay: float, wd_mode: str, maximize: bool, cautious: bool,
            state_dtype: str) -> dict:
    return dict(lr=lr, weight_decay=weight_decay, wd_mode=wd_mode, maximize=maximize,
                cautious=cautious, state_dtype=state_dtype)


class SignSGD(SignOptimizer):
    """signSGD (Bernstein et al. 2018): ``p <- p - lr*sign(g)``. Keeps no state."""

    family = "sign"

    def __init__(self, params: Iterable, lr: LR = 1e-4, *, weight_decay: float = 0.0,
                 wd_mode: str = "decoupled", maximize: bool = False, cautious: bool = False,
                 state_dtype: str = "fp32", backend: str = "auto") -> None:
        super().__init__(params, _shared(lr, weight_decay, wd_mode, maximize, cautious, state_dtype),
                         backend)


class Signum(SignOptimizer):
    """Signum: ``m <- beta*m + (1-beta)*g;  p <- p - lr*sign(m)`` (m0 = 0, m persists)."""

    family = "signum"

    def __init__(self, params: Iterable, lr: LR = 1e-4, momentum: float = 0.9, *,
                 weight_decay: float = 0.0, wd_mode: str = "decoupled", maximize: bool = False,
                 cautious: bool = False, state_dtype: str = "fp32", backend: str = "auto") -> None:
        d = _shared(lr, weight_decay, wd_mode, maximize, cautious, state_dtype)
        d["momentum"] = momentum
        super().__init__(params, d, backend)


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
                 huber_delta: float = 1.0, p: float = 2.0, wd_mode: str = "decoupled",
                 maximize: bool = False, cautious: bool = False, state_dtype: str = "fp32",
                 backend: str = "auto") -> None:
        d = _shared(lr, weight_decay, wd_mode, maximize, cautious, state_dtype)
        d.update(betas=tuple(betas), kappa=kappa, huber_delta=huber_delta, p=p)
        super().__init__(params, d, backend)


class Lion(LionKappa):
    """Lion (Chen et al. 2023): ``p <- p*(1 - lr*wd);  p <- p - lr*sign(beta1*m + (1-beta1)*g);
    m <- beta2*m + (1-beta2)*g``. Defaults lr=1e-4, betas=(0.9, 0.99), weight_decay=0."""

    def __init__(self, params: Iterable, lr: LR = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, wd_mode: str = "decoupled", maximize: bool = False,
                 cautious: bool = False, state_dtype: str = "fp32", backend: str = "auto") -> None:
        super().__init__(params, lr, betas, weight_decay, "l1", wd_mode=wd_mode, maximize=maximize,
                         cautious=cautious, state_dtype=state_dtype, backend=backend)


class SignConversion(SignOptimizer):
    """Unbiased stochastic-sign version of a base direction ``d`` (arXiv 2604.15416).

    ``B <- max(B*envelope_decay, |src|)`` reduced per ``envelope`` cell (``"element"``,
    ``"row"``, ``"block"`` of ``envelope_block`` flat elements, ``"tensor"``), with
    ``src = d`` (``envelope_source="direction"``) or ``g`` (``"grad"``);
    ``p <- p*decay - lr*S_B(d)`` where ``S_B(d) = +1`` with probability ``(1 + d/B)/2``, else
    ``-1``, so ``E[dp] = -lr*d/B``. Bases: ``"sgd"`` (d = g), ``"momentum"`` (EMA with
    ``betas[0]``), ``"adamw"`` (bias-corrected ``m/(sqrt(v)+eps)``), ``"lion"`` (Lion's c).
    Random bits: Philox keyed by ``seed``, the step and the tensor index (bitwise reproducible).
    """

    family = "stochastic"

    def __init__(self, params: Iterable, lr: LR = 1e-4, base: str = "adamw",
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *,
                 weight_decay: float = 0.0, envelope: str = "element",
                 envelope_source: str = "direction", envelope_decay: float = 1.0,
                 envelope_block: int = 256, seed: int | None = None, wd_mode: str = "decoupled",
                 maximize: bool = False, cautious: bool = False, state_dtype: str = "fp32",
                 backend: str = "auto") -> None:
        d = _shared(lr, weight_decay, wd_mode, maximize, cautious, state_dtype)
        d.update(base=base, betas=tuple(betas), eps=eps, envelope=envelope,
                 envelope_source=envelope_source, envelope_decay=envelope_decay,
                 envelope_block=envelope_block, seed=seed)
        super().__init__(params, d, backend)


class StoSignSGD(SignConversion):
    """StoSignSGD: ``m <- beta*m + (1-beta)*g;  G <- max(G, |m|);  p <- p*decay - lr*S_G(m)``.

    The paper's full text was not readable; its unknowns are options with these defaults:
    ``beta=0.9``; envelope per ``"element"``; envelope source ``"direction"`` (|m|; ``"grad"``
    uses |g|); ``envelope_decay=1`` (G never decreases). Step 1 equals Signum's.
    """

    def __init__(self, params: Iterable, lr: LR = 1e-4, beta: float = 0.9, *,
                 weight_decay: float = 0.0, envelope: str = "element",
                 envelope_source: str = "direction", envelope_decay: float = 1.0,
                 envelope_block: int = 256, seed: int | None = None, wd_mode: str = "decoupled",
                 maximize: bool = False, cautious: bool = False, state_dtype: str = "fp32",
                 backend: str = "auto") -> None:
        super().__init__(params, lr, "momentum", (beta, beta), weight_decay=weight_decay,
                         envelope=envelope, envelope_source=envelope_source,
                         envelope_decay=envelope_decay, envelope_block=envelope_block, seed=seed,
                         wd_mode=wd_mode, maximize=maximize, cautious=cautious,
                         state_dtype=state_dtype, backend=backend)

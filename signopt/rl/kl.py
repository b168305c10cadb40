"""KL estimators of KL(π‖π_ref) per token, with ``d = ref_logp − logp`` (samples from π).

* ``k1`` = −d                (unbiased, high variance, can be negative)
* ``k2`` = ½ d²
* ``k3`` = e^d − d − 1       (unbiased, ≥ 0; value and gradient are zero at d = 0)
* ``low_var_kl`` = clamp(k3, −10, 10) with d clamped to [−20, 20] before exp
"""

from __future__ import annotations

import torch
from torch import Tensor

from .aggregation import check_choice

from .loss_inputs import LOG_RATIO_CLAMP


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = logp − ref_logp."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = ½ (ref_logp − logp)²."""
    return 0.5 * (ref_logp - logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = e^d − d − 1 with d = ref_logp − logp (d clamped to ±20 before exp)."""
    d = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1


def kl_low_var(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 clamped to [−10, 10]."""
    return kl_k3(logp, ref_logp).clamp(-10.0, 10.0)


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3, "low_var_kl": kl_low_var}


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate of the given ``kind`` (one of ``KL_ESTIMATORS``)."""
    check_choice("kl", kind, KL_ESTIMATORS)
    return KL_ESTIMATORS[kind](logp, ref_logp)

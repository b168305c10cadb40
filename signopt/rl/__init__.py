"""signopt.rl: a thin GRPO-family RL trainer for transformers causal LMs with any optimizer.

Losses by name in :data:`LOSSES`, advantage estimators in :data:`ADVANTAGES`, KL estimators in
:data:`KL_ESTIMATORS`; :class:`Trainer` with :class:`RLConfig` runs the loop (``python -m signopt.rl
train``). Heavy dependencies (transformers) load only with the trainer.
"""

from .advantages import ADVANTAGES, compute_advantages
from .aggregation import AGGREGATIONS, aggregate
from .kl import KL_ESTIMATORS, kl_penalty
from .logprob import chunked_logprobs
from .loss_inputs import LossInputs, step_norms
from .losses import EXPERIMENTAL, LOSSES, compute_loss

__all__ = [
    "ADVANTAGES", "AGGREGATIONS", "EXPERIMENTAL", "KL_ESTIMATORS", "LOSSES", "LossInputs", "RLConfig", "Trainer",
    "aggregate", "chunked_logprobs", "compute_advantages", "compute_loss", "kl_penalty", "step_norms",
]


def __getattr__(name: str):
    if name == "Trainer":
        from .trainer import Trainer

        return Trainer
    if name == "RLConfig":
        from .config import RLConfig

        return RLConfig
    raise AttributeError(name)

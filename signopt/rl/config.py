"""Run configuration: a dataclass, readable from a JSON or TOML file and overridable by flags."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .advantages import ADVANTAGES
from .aggregation import check_choice
from .losses import LOSSES
from .optimizers import LR_SCHEDULES, OPTIMIZERS
from .tasks import TASKS


# Knobs a loss gets when the config names none: the KL-to-reference penalty keeps GRPO's sign-optimizer
# runs from drifting (bench/results/rl_default.md); `--loss-knobs '{}'` turns it off.
DEFAULT_LOSS_KNOBS = {"grpo": {"beta": 0.1}}


@dataclass
class RLConfig:
    """Everything a run needs. The defaults are the built-in main job: a ~0.9M-parameter Qwen2
    with a character tokenizer, warm-started on 2-digit addition to ≈0.2 held-out accuracy, then
    GRPO with Lion."""

    # model and data
    model: str | None = None  # local from_pretrained folder; None builds the tiny model
    task: str = "addition"  # addition | sorting | jsonl
    data: str | None = None  # jsonl rows {"prompt", "answer"} for task=jsonl
    eval_data: str | None = None
    digits: int = 2
    eval_size: int = 200
    seed: int = 0
    threads: int = 1
    # supervised warm start (built-in model only)
    warmstart_target: float = 0.2
    warmstart_max_steps: int = 3000
    warmstart_lr: float = 3e-4
    warmstart_batch: int = 64
    warmstart_eval_every: int = 10
    warmstart_ema: float = 0.0  # > 0: measure (and keep) an EMA of the weights instead of the raw weights
    # RL
    steps: int = 2000
    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 4
    temperature: float = 0.5  # sampling (and log-prob) temperature; 1.0 learned slower on seed 1
    loss: str = "grpo"
    loss_knobs: dict | None = None  # None: DEFAULT_LOSS_KNOBS for the loss (grpo: KL β = 0.1), else exactly these
    advantage: str | None = None  # None: the loss's paired estimator
    inner_epochs: int = 1
    micro_batch_prompts: int = 8
    optimizer: str = "lion"
    lr: float | None = None  # None: the optimizer's default (Lion 1e-5, AdamW 1e-4)
    lr_schedule: str = "cosine"  # constant | linear | cosine (decay to 0 at `steps`)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    optimizer_kwargs: dict = field(default_factory=dict)  # more constructor arguments, e.g. {"betas": [0.95, 0.98]}
    max_grad_norm: float = 0.0  # 0 disables clipping
    policy_ema: float = 0.99  # > 0: the run's result is an EMA of the policy's weights (θ̄ ← ema·θ̄ + (1−ema)·θ)
    reference_model: bool = True  # keep a frozen copy to report (and penalise) KL
    kl_every: int = 10  # report KL to the reference every k steps (every step when the loss uses it)
    dynamic_sampling: bool = False  # DAPO: train only on groups with mixed rewards
    overlong_filter: bool = False  # DAPO: mask completions without EOS
    overlong_cache: int = 0  # DAPO soft overlong penalty window L_cache (0 = off)
    r2vpo_eta: float = 0.0  # r2vpo dual step size for λ (0 keeps λ fixed)
    r2vpo_delta: float = 0.0
    chunked_logprobs: bool = True
    # output
    out: str | None = None
    eval_every: int = 250
    save_every: int = 0  # 0: checkpoint only at the end
    resume: str | None = None
    progress: bool = True

    def validate(self) -> "RLConfig":
        check_choice("task", self.task, TASKS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("loss", self.loss, LOSSES)
        if self.advantage is not None:
            check_choice("advantage", self.advantage, ADVANTAGES)
        for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "inner_epochs",
                     "micro_batch_prompts", "threads", "kl_every", "eval_size", "warmstart_batch", "warmstart_eval_every",
                     "warmup_steps"):
            low = 0 if name in ("steps", "kl_every", "warmup_steps") else 1
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)} must be ≥ {low}")
        if self.optimizer not in OPTIMIZERS and "." not in self.optimizer:
            raise ValueError(f"optimizer={self.optimizer!r} is not supported; allowed values: "
                             f"{', '.join(OPTIMIZERS)} or a dotted path to a torch.optim.Optimizer subclass")
        for name in ("warmstart_ema", "policy_ema"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")
        if self.loss_knobs is not None and not isinstance(self.loss_knobs, dict):
            raise ValueError("loss_knobs must be a mapping of knob name to value")
        if not isinstance(self.optimizer_kwargs, dict) or {"lr", "weight_decay", "params"} & set(self.optimizer_kwargs):
            raise ValueError("optimizer_kwargs must be a mapping of constructor arguments other than params, lr "
                             "and weight_decay (those have their own fields)")
        return self

    @property
    def knobs(self) -> dict:
        """The loss's knobs: ``loss_knobs``, or the loss's entry in :data:`DEFAULT_LOSS_KNOBS`."""
        return dict(DEFAULT_LOSS_KNOBS.get(self.loss, {}) if self.loss_knobs is None else self.loss_knobs)

    def to_dict(self) -> dict:
        return asdict(self)


def _coerce(name: str, raw, kind):
    if raw is None or kind.startswith("dict"):
        return raw
    if isinstance(raw, str) and raw.lower() in ("none", "null") and "None" in kind:
        return None
    try:
        if kind.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={raw!r} is not a valid {kind}") from None


def config_from(file: str | None = None, overrides: dict | None = None) -> RLConfig:
    """RLConfig from defaults ← ``file`` (.json or .toml) ← ``overrides`` (values may be strings)."""
    values: dict = {}
    if file is not None:
        path = Path(file)
        if path.suffix == ".toml":
            values = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            values = json.loads(path.read_text())
        else:
            raise ValueError(f"config={file!r} must end in .json or .toml")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    kinds = {f.name: str(f.type) for f in fields(RLConfig)}
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; allowed: {', '.join(kinds)}")
    return RLConfig(**{k: _coerce(k, v, kinds[k]) for k, v in values.items()}).validate()

"""Run configuration: a dataclass, readable from a JSON or TOML file and overridable by flags."""

from __future__ import annotations

import inspect
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import signopt
from signopt.optimizers import OPTIMIZER_OPTIONS, SHARED_DEFAULTS

from .advantages import ADVANTAGES
from .aggregation import check_choice, check_knobs
from .losses import LOSSES
from .optimizers import LR_SCHEDULES, OPTIMIZERS, resolve_optimizer
from .tasks import TASKS


# Smallest allowed value of each integer field.
INT_MINIMA = {
    "digits": 1, "eval_size": 1, "threads": 1, "warmstart_max_steps": 0, "warmstart_batch": 1,
    "warmstart_eval_every": 1, "steps": 0, "prompts_per_step": 1, "group_size": 1, "max_new_tokens": 1,
    "inner_epochs": 1, "micro_batch_prompts": 1, "warmup_steps": 0, "kl_every": 0, "overlong_cache": 0,
    "eval_every": 0, "save_every": 0,
}

# Knobs a loss gets when the config names none: the KL-to-reference penalty keeps GRPO's sign-optimizer
# runs from drifting (bench/results/rl_default.md); `--loss-knobs '{}'` turns it off.
DEFAULT_LOSS_KNOBS = {"grpo": {"beta": 0.1}}


@dataclass
class RLConfig:
    """Everything a run needs (each field is a ``--flag``; :data:`FIELD_HELP` describes them). The
    defaults are the built-in main job: a ~0.9M-parameter Qwen2 with a character tokenizer,
    warm-started on 2-digit addition to ≈0.2 held-out accuracy, then GRPO with Lion."""

    # model and data
    model: str | None = None
    task: str = "addition"
    data: str | None = None
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
    warmstart_ema: float = 0.0
    # RL
    steps: int = 2000
    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 4
    temperature: float = 0.5  # 1.0 learned slower on seed 1
    loss: str = "grpo"
    loss_knobs: dict | None = None
    advantage: str | None = None
    inner_epochs: int = 1
    micro_batch_prompts: int = 8
    optimizer: str = "lion"
    lr: float | None = None
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    optimizer_kwargs: dict = field(default_factory=dict)
    max_grad_norm: float = 0.0
    policy_ema: float = 0.99
    reference_model: bool = True
    kl_every: int = 10
    dynamic_sampling: bool = False
    overlong_filter: bool = False
    overlong_cache: int = 0
    r2vpo_eta: float = 0.0
    r2vpo_delta: float = 0.0
    chunked_logprobs: bool = True
    # output
    out: str | None = None
    eval_every: int = 250
    save_every: int = 0
    resume: str | None = None
    progress: bool = True
    step_stats: bool = False

    def validate(self) -> "RLConfig":
        """Check every field (names, ranges, knob names, paths) without loading anything heavy;
        raise a ValueError naming the field and what it allows."""
        check_choice("task", self.task, TASKS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("loss", self.loss, LOSSES)
        if self.advantage is not None:
            check_choice("advantage", self.advantage, ADVANTAGES)
        for name, low in INT_MINIMA.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)} must be ≥ {low}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name}={value} must be a finite number")
        for name in ("warmstart_lr", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        for name in ("weight_decay", "max_grad_norm", "r2vpo_eta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be ≥ 0")
        for name in ("warmstart_ema", "policy_ema"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if not 0.0 <= self.warmstart_target <= 1.0:
            raise ValueError(f"warmstart_target={self.warmstart_target} must be in [0, 1]")
        if self.overlong_cache > self.max_new_tokens:
            raise ValueError(f"overlong_cache={self.overlong_cache} must be in [0, max_new_tokens={self.max_new_tokens}]")
        if self.loss_knobs is not None and not isinstance(self.loss_knobs, dict):
            raise ValueError("loss_knobs must be a mapping of knob name to value")
        check_knobs(f"loss_knobs: loss={self.loss!r}", LOSSES[self.loss], self.knobs)
        self._validate_optimizer()
        self._validate_paths()
        return self

    def _validate_optimizer(self) -> None:
        if self.optimizer not in OPTIMIZERS and "." not in self.optimizer:
            raise ValueError(f"optimizer={self.optimizer!r} is not supported; allowed values: "
                             f"{', '.join(OPTIMIZERS)} or a dotted path to a torch.optim.Optimizer subclass")
        if not isinstance(self.optimizer_kwargs, dict) or {"lr", "weight_decay", "params"} & set(self.optimizer_kwargs):
            raise ValueError("optimizer_kwargs must be a mapping of constructor arguments other than params, lr "
                             "and weight_decay (those have their own fields)")
        allowed = optimizer_arguments(resolve_optimizer(self.optimizer))
        unknown = sorted(set(self.optimizer_kwargs) - set(allowed or self.optimizer_kwargs))
        if unknown:
            raise ValueError(f"optimizer_kwargs: optimizer={self.optimizer!r} does not take "
                             f"{', '.join(unknown)}; allowed: {', '.join(allowed)}")
        if "step_stats" in self.optimizer_kwargs:
            raise ValueError("optimizer_kwargs: set step statistics with the step_stats field")
        if self.step_stats and not issubclass(resolve_optimizer(self.optimizer), signopt.SignOptimizer):
            raise ValueError(f"step_stats=True needs a signopt optimizer; optimizer={self.optimizer!r} is not one")

    def _validate_paths(self) -> None:
        for name in ("model", "data", "eval_data", "resume"):
            path = getattr(self, name)
            if path is not None and not Path(path).exists():
                raise ValueError(f"{name}={path!r}: the path does not exist")
        if self.model is not None and not (Path(self.model) / "config.json").is_file():
            raise ValueError(f"model={self.model!r} is not a from_pretrained folder (it has no config.json)")

    @property
    def knobs(self) -> dict:
        """The loss's knobs: ``loss_knobs``, or the loss's entry in :data:`DEFAULT_LOSS_KNOBS`."""
        return dict(DEFAULT_LOSS_KNOBS.get(self.loss, {}) if self.loss_knobs is None else self.loss_knobs)

    def to_dict(self) -> dict:
        return asdict(self)


def optimizer_arguments(cls: type) -> list[str] | None:
    """Keyword arguments ``cls`` takes besides params, lr and weight_decay; None when it takes any
    keyword (a ``**kwargs`` we cannot see into)."""
    params = inspect.signature(cls).parameters
    named = [n for n, p in params.items() if p.kind is not p.VAR_KEYWORD and n not in ("params", "lr", "weight_decay")]
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return named
    if issubclass(cls, signopt.SignOptimizer):  # **options: signopt's shared options
        return named + [n for n in (*SHARED_DEFAULTS, *OPTIMIZER_OPTIONS) if n not in named and n != "weight_decay"]
    return None


def _choices(values) -> str:
    return ", ".join(values)


FIELD_HELP = {
    "model": "local from_pretrained folder of a causal LM and its tokenizer (no Hub downloads); "
             "default: the built-in ~0.9M-parameter Qwen2 with a character tokenizer, warm-started first",
    "task": f"verifiable task: {_choices(TASKS)}",
    "data": "task=jsonl: a .jsonl file of {\"prompt\": ..., \"answer\": ...} rows",
    "eval_data": "task=jsonl: held-out rows (default: the last 10% of --data)",
    "digits": "task=addition: digits per operand",
    "eval_size": "held-out prompts for the greedy accuracy (addition, sorting)",
    "seed": "seed of the model init, data order and sampling",
    "threads": "torch CPU threads",
    "warmstart_target": "built-in model: supervised warm start until held-out accuracy reaches this (0 skips it)",
    "warmstart_max_steps": "warm start: at most this many steps",
    "warmstart_lr": "warm start: AdamW learning rate",
    "warmstart_batch": "warm start: examples per step",
    "warmstart_eval_every": "warm start: measure accuracy every this many steps",
    "warmstart_ema": "warm start: > 0 measures (and keeps) an EMA of the weights with this decay",
    "steps": "RL optimizer steps (one sample-score-update round each)",
    "prompts_per_step": "prompts sampled per RL step",
    "group_size": "completions per prompt (G)",
    "max_new_tokens": "completion length limit",
    "temperature": "sampling (and log-prob) temperature",
    "loss": f"policy loss: {_choices(LOSSES)}",
    "loss_knobs": "JSON object of the loss's keyword arguments, e.g. '{\"beta\": 0.04}' "
                  "(default: grpo gets {\"beta\": 0.1}, others none)",
    "advantage": f"advantage estimator: {_choices(ADVANTAGES)} (default: the loss's own, else grpo)",
    "inner_epochs": "optimizer steps per batch of rollouts (> 1 is off-policy)",
    "micro_batch_prompts": "prompts per forward/backward micro-batch (does not change the update)",
    "optimizer": f"optimizer: {_choices(OPTIMIZERS)}, or a dotted path to a torch.optim.Optimizer subclass",
    "lr": "peak learning rate (default: the optimizer's, Lion 1e-5, AdamW 1e-4)",
    "lr_schedule": f"learning-rate schedule over --steps: {_choices(LR_SCHEDULES)}",
    "warmup_steps": "linear learning-rate warm-up steps",
    "weight_decay": "decoupled weight decay",
    "optimizer_kwargs": "JSON object of further optimizer arguments, e.g. '{\"betas\": [0.95, 0.98]}'",
    "max_grad_norm": "clip the gradient norm to this (0: no clipping)",
    "policy_ema": "> 0: the run's result is an EMA of the policy weights with this decay",
    "reference_model": "keep a frozen copy of the initial policy to report (and penalise) KL",
    "kl_every": "report KL to the reference every this many steps (every step when the loss uses it)",
    "dynamic_sampling": "DAPO: train only on groups whose rewards differ",
    "overlong_filter": "DAPO: mask completions that hit max_new_tokens without EOS",
    "overlong_cache": "DAPO soft overlong penalty window L_cache (0: off)",
    "r2vpo_eta": "loss=r2vpo: dual step size for λ, updated once per optimizer step (0 keeps λ fixed)",
    "r2vpo_delta": "loss=r2vpo: target variance δ of the token ratios",
    "chunked_logprobs": "compute log-probs in vocabulary chunks (never the full [B, T, V] logits)",
    "out": "output folder for metrics.jsonl, summary.json, curves.png, checkpoint/ "
           "(default: runs/<UTC timestamp>; an existing non-empty folder is refused)",
    "eval_every": "greedy held-out accuracy every this many steps (0: only at the end)",
    "save_every": "write checkpoint/ every this many steps (0: only at the end)",
    "resume": "a run's DIR/checkpoint: continue that run with its own config; flags that contradict it are errors",
    "progress": "show progress bars (warm start and RL)",
    "step_stats": "signopt optimizers: log the last optimizer step's statistics of each RL step (update RMS, "
                  "sign-flip fraction, non-finite gradients, state absmax per param group) to metrics.jsonl "
                  "as opt/g<group>/<name> and plot them in curves.png",
}


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


def coerce_values(values: dict) -> dict:
    """``values`` (strings allowed) typed as the RLConfig fields they name; unknown names are an error."""
    kinds = {f.name: str(f.type) for f in fields(RLConfig)}
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; allowed: {', '.join(kinds)}")
    return {k: _coerce(k, v, kinds[k]) for k, v in values.items()}


def read_config_file(file: str) -> dict:
    """The field values in a .json or .toml config file."""
    path = Path(file)
    if path.suffix not in (".toml", ".json"):
        raise ValueError(f"config={file!r} must end in .json or .toml")
    if not path.is_file():
        raise ValueError(f"config={file!r}: the path does not exist")
    return tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())


def config_from(file: str | None = None, overrides: dict | None = None) -> RLConfig:
    """RLConfig from defaults ← ``file`` (.json or .toml) ← ``overrides`` (values may be strings)."""
    values = read_config_file(file) if file is not None else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return RLConfig(**coerce_values(values)).validate()


def check_out_dir(cfg: RLConfig) -> None:
    """Refuse to write into an existing non-empty ``out`` unless resuming the run that lives there."""
    if cfg.out is None:
        return
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if cfg.resume is not None and Path(cfg.resume).resolve().parent == out.resolve():
            return
        raise ValueError(f"out={cfg.out!r} exists and is not empty; choose a new folder, or continue the run "
                         f"there with --resume {out / 'checkpoint'}")

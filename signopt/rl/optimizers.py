"""Optimizers by name, resolved when the optimizer is built (signopt's own classes are looked up
on the ``signopt`` package then), or any ``torch.optim.Optimizer`` subclass by dotted path."""

from __future__ import annotations

import importlib
import math

import torch

import signopt

# name → (signopt attribute | torch.optim class, default learning rate for RL fine-tuning)
OPTIMIZERS = {
    "lion": ("Lion", 1e-5),
    "lionkappa": ("LionKappa", 1e-5),
    "signum": ("Signum", 3e-5),
    "signsgd": ("SignSGD", 3e-5),
    "stosignsgd": ("StoSignSGD", 3e-5),
    "adamw": (torch.optim.AdamW, 1e-4),
    "adam": (torch.optim.Adam, 1e-4),
    "sgd": (torch.optim.SGD, 1e-2),
}


def resolve_optimizer(name: str) -> type:
    """The optimizer class for ``name``: a key of ``OPTIMIZERS`` or a dotted path ``pkg.mod.Class``."""
    if name in OPTIMIZERS:
        target = OPTIMIZERS[name][0]
        if isinstance(target, str):
            if not hasattr(signopt, target):
                raise ValueError(f"optimizer={name!r}: signopt.{target} is not available in this installation")
            return getattr(signopt, target)
        return target
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            raise ValueError(f"optimizer={name!r} cannot be imported") from None
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
            return cls
        raise ValueError(f"optimizer={name!r} is not a torch.optim.Optimizer subclass")
    raise ValueError(f"optimizer={name!r} is not supported; allowed values: {', '.join(OPTIMIZERS)} or a dotted path")


def default_lr(name: str) -> float:
    """The default RL learning rate for ``name`` (1e-4 for dotted paths)."""
    return OPTIMIZERS[name][1] if name in OPTIMIZERS else 1e-4


def build_optimizer(name: str, params, lr: float | None = None, weight_decay: float = 0.0,
                    **kwargs) -> torch.optim.Optimizer:
    """Instantiate optimizer ``name`` on ``params`` (``kwargs``: more constructor arguments)."""
    cls = resolve_optimizer(name)
    return cls(params, lr=default_lr(name) if lr is None else lr, weight_decay=weight_decay, **kwargs)


LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based) of ``total``:
    linear warm-up over ``warmup`` steps, then ``constant`` 1, ``linear`` 1 → 0, or ``cosine``
    ½(1 + cos(π·t)) with t the fraction of the post-warm-up steps done."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    t = min((step - warmup) / (total - warmup), 1.0)
    return 1.0 - t if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))

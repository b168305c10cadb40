"""The static description of an update rule, built once per param group from its options.

A :class:`UpdateRule` names everything a backend must know to pick a kernel (family,
kappa, stochastic base, envelope, weight-decay mode, flags, storage format). The numbers that
change from step to step live in :mod:`signopt.scalars`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Callable

import torch

from . import declaration

# The allowed values of each option (declared in signopt.declaration)
FAMILIES = tuple(declaration.FAMILIES)
KAPPAS = tuple(declaration.KAPPAS)
WD_MODES = declaration.WD_MODES
STATE_DTYPES = declaration.STATE_DTYPES
ROUNDINGS = declaration.ROUNDINGS
STOCHASTIC_BASES = tuple(declaration.BASES)
ENVELOPES = tuple(declaration.ENVELOPES)
ENVELOPE_SOURCES = declaration.ENVELOPE_SOURCES
POW2_BLOCKS = tuple(2 ** i for i in range(declaration.MAX_POW2_BLOCK.bit_length()))
"""The ``state_block`` values of a power-of-two-scaled (MX) state format."""


@dataclass(frozen=True)
class UpdateRule:
    """What a group's step computes; see ``signopt.reference`` for the math of each field."""

    family: str
    wd_mode: str = "decoupled"
    maximize: bool = False
    cautious: bool = False
    state_dtype: str = "fp32"
    kappa: str = "l1"
    kappa_fn: Callable | None = field(default=None, compare=False)
    base: str = "momentum"
    envelope: str = "element"
    envelope_source: str = "direction"
    envelope_block: int = 256
    state_rounding: str = "nearest"
    param_rounding: str = "nearest"
    state_block: int = 256
    fp8_min_numel: int = 4096

    @property
    def stochastic(self) -> bool:
        return self.family == "stochastic"

    @property
    def uses_bias_correction(self) -> bool:
        return self.stochastic and self.base == "adamw"

    def identity(self) -> str:
        """The algorithm this rule runs, as recorded in state dicts: the fields that change what a
        step computes or which state it keeps, not its storage format or hyperparameter values
        (e.g. ``"lion(kappa=l1)"``, ``"stochastic(base=adamw, envelope=row, envelope_source=grad)"``)."""
        if self.family == "lion":
            return f"lion(kappa={self.kappa})"
        if self.family == "stochastic":
            return (f"stochastic(base={self.base}, envelope={self.envelope}, "
                    f"envelope_source={self.envelope_source})")
        return self.family

    @property
    def draws_random_bits(self) -> bool:
        return (self.stochastic or self.state_rounding == "stochastic"
                or self.param_rounding == "stochastic")

    def keeps_step(self) -> bool:
        """Rules that draw random bits or bias-correct keep a step counter."""
        return self.draws_random_bits


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


_TRUSTED = object()  # stands for a tensor option validated when it was set (see validate_group)


def _real(name: str, value: Any, lo: float | None = None, hi: float | None = None,
          lo_open: bool = False, hi_open: bool = False) -> None:
    if value is _TRUSTED:
        return
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{name} as a tensor must be a 1-element floating tensor, got "
                             f"shape {tuple(value.shape)} and dtype {value.dtype}")
        if value.device.type != "cpu":
            return  # checking a device tensor would synchronise
        value = float(value.item())
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {value}")


def _beta(name: str, value: Any) -> None:
    _real(name, value, 0.0, 1.0, hi_open=True)


def _trusting(group: dict, trusted: tuple[torch.Tensor, ...]) -> dict:
    """``group`` with every tensor option that is one of ``trusted`` (by identity, also inside
    a ``betas`` pair) replaced by a marker whose value is not read again."""
    def mark(v: Any) -> Any:
        return _TRUSTED if isinstance(v, torch.Tensor) and any(v is t for t in trusted) else v
    return {k: type(v)(map(mark, v)) if isinstance(v, (tuple, list)) else mark(v) for k, v in group.items()}


def validate_group(family: str, group: dict, trusted: tuple[torch.Tensor, ...] = ()) -> None:
    """Raise ``ValueError`` naming the option and its allowed values; changes nothing. The value
    of a tensor option is read (CPU tensors) unless the tensor is in ``trusted``: validated when
    it was set, as torch checks a tensor lr at construction only."""
    if trusted:
        group = _trusting(group, trusted)
    _real("lr", group["lr"], 0.0)
    _real("weight_decay", group["weight_decay"], 0.0)
    _choice("wd_mode", group["wd_mode"], WD_MODES)
    _choice("state_dtype", group["state_dtype"], STATE_DTYPES)
    _choice("state_rounding", group["state_rounding"], ROUNDINGS)
    _choice("param_rounding", group["param_rounding"], ROUNDINGS)
    for name in ("state_block", "fp8_min_numel"):
        value = group[name]
        if name == "state_block" and value is None:
            continue  # the state format's default block
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "state_block" else 0):
            raise ValueError(f"{name} must be a {'positive' if name == 'state_block' else 'non-negative'} "
                             f"int (or None for state_block: the format's default), got {value!r}")
    fmt = declaration.FORMATS[group["state_dtype"]]
    scale = group.get("state_scale")
    if scale is not None and (isinstance(scale, bool) or scale not in fmt.scale_options):
        takes = [n for n, f in declaration.FORMATS.items() if f.scale_options]
        raise ValueError(f"state_scale must be one of {fmt.scale_options + (None,)} for "
                         f"state_dtype={group['state_dtype']!r} (only {takes} take a state_scale), got {scale!r}")
    fmt = declaration.FORMATS[declaration.format_for(group["state_dtype"], scale)]
    allowed = tuple(b for b in POW2_BLOCKS if b >= fmt.min_block)
    if fmt.pow2_blocks and group["state_block"] is not None and group["state_block"] not in allowed:
        raise ValueError(f"state_block must be a power of two in {allowed} for "
                         f"state_dtype={group['state_dtype']!r} (one {fmt.scale.upper()} scale per block; "
                         f"default {fmt.default_block}), got {group['state_block']!r}")
    seed = group["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    for flag in ("maximize", "cautious"):
        if not isinstance(group[flag], bool):
            raise ValueError(f"{flag} must be True or False, got {group[flag]!r}")
    if group["wd_mode"] == "independent":
        _real("initial lr (for wd_mode='independent')", group["lr0"], 0.0, lo_open=True)
    if "momentum" in group:
        _beta("momentum", group["momentum"])
    if "beta" in group:
        _beta("beta", group["beta"])
    if "betas" in group:
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        _beta("betas[0]", betas[0])
        _beta("betas[1]", betas[1])
    if "kappa" in group and not callable(group["kappa"]):
        _choice("kappa", group["kappa"], KAPPAS)
    if "huber_delta" in group:
        _real("huber_delta", group["huber_delta"], 0.0, lo_open=True)
    if "p" in group:
        _real("p", group["p"], 1.0, lo_open=True)
    if "eps" in group:
        _real("eps", group["eps"], 0.0, lo_open=True)
    if family == "stochastic":
        _choice("base", group["base"], STOCHASTIC_BASES)
        _choice("envelope", group["envelope"], ENVELOPES)
        _choice("envelope_source", group["envelope_source"], ENVELOPE_SOURCES)
        _real("envelope_decay", group["envelope_decay"], 0.0, 1.0, lo_open=True)
        block = group["envelope_block"]
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"envelope_block must be a positive int, got {block!r}")


def rule_from_group(family: str, group: dict) -> UpdateRule:
    """The :class:`UpdateRule` of a validated group."""
    kappa = group.get("kappa", "l1")
    fmt = declaration.format_for(group["state_dtype"], group.get("state_scale"))
    kw: dict[str, Any] = dict(
        family=family, wd_mode=group["wd_mode"], maximize=group["maximize"],
        cautious=group["cautious"], state_dtype=fmt,
        state_rounding=group["state_rounding"], param_rounding=group["param_rounding"],
        state_block=declaration.block_of(fmt, group["state_block"]),
        fp8_min_numel=group["fp8_min_numel"],
        kappa="callable" if callable(kappa) else kappa,
        kappa_fn=kappa if callable(kappa) else None,
    )
    if family == "stochastic":
        kw.update(base=group["base"], envelope=group["envelope"],
                  envelope_source=group["envelope_source"],
                  envelope_block=group["envelope_block"])
    return UpdateRule(**kw)

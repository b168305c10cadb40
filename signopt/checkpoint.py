"""State dicts of signopt optimizers: the schema, the rule that wrote them, and the checks a
loaded state passes before anything in the optimizer is replaced.

Schema 2 records in every param group (DCP's ``get_optimizer_state_dict`` keeps only ``state``
and ``param_groups``) the schema version and the rule's identity (:meth:`UpdateRule.identity`,
e.g. ``"lion(kappa=l1)"``; the wrapper records ``"sign_conversion_wrapper(base=Adam)"``).
Schema 1 (signopt 0.1.0) recorded only the version; its rule is read off the group's keys.
Schema 3 is schema 2 written by a signopt that draws random bits v2 (:mod:`signopt.philox`);
schema-1 and schema-2 dicts were written by runs that drew v1 bits, and load and continue with
v2 bits: a stochastic rule resumed from one is not bit-identical to the uninterrupted v1 run
(its state and step counters are; the draws after the resume differ).
A state dict loads only into an optimizer running the same rule; its state may be in any
storage format and is converted into the loading optimizer's.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import state_layout
from .declaration import FORMATS, STATE_FORMATS
from .rule import UpdateRule

SCHEMA_KEY = "signopt_schema"
RULE_KEY = "signopt_rule"
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)
CALLABLE_MARKER = "callable"
BASE_PREFIX = "base."  # base-optimizer entries inside SignConversionWrapper's state dict


def schema_of(state_dict: dict[str, Any]) -> int:
    """The schema of ``state_dict`` (at the top, or in every group after DCP); ``ValueError``
    if it is missing or not one this signopt reads."""
    version = state_dict.get(SCHEMA_KEY)
    if version is None:
        found = {g.get(SCHEMA_KEY) for g in state_dict.get("param_groups", [])}
        version = found.pop() if len(found) == 1 else None
    if version not in READABLE_SCHEMAS:
        raise ValueError(f"state_dict has {SCHEMA_KEY}={version!r}; this signopt reads schemas "
                         f"{READABLE_SCHEMAS} (was it saved by a signopt optimizer?)")
    return version


def saved_identity(group: dict[str, Any]) -> str:
    """The rule identity a saved param group was written by (recorded, or read off a schema-1
    group's keys: a wrapper has ``base.`` keys, a stochastic rule ``base``, Lion ``kappa``,
    Signum ``momentum``)."""
    if RULE_KEY in group:
        return str(group[RULE_KEY])
    if any(isinstance(k, str) and k.startswith(BASE_PREFIX) for k in group):
        return "sign_conversion_wrapper"
    if "base" in group:
        return (f"stochastic(base={group['base']}, envelope={group.get('envelope')}, "
                f"envelope_source={group.get('envelope_source')})")
    if "kappa" in group:
        return f"lion(kappa={group['kappa']})"
    return "signum" if "momentum" in group else "sign"


def check_identity(index: int, saved: str, current: str, optimizer: str) -> None:
    if saved != current:
        raise ValueError(f"state_dict param_groups[{index}] was written by rule {saved!r}; this "
                         f"{optimizer} runs {current!r}. Load it into an optimizer of the rule that "
                         "wrote it (state formats may differ; the rule may not)")


def _tensor(where: str, name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{where} state {name!r} must be a tensor, got {type(value).__name__}")
    return value


def check_step(where: str, value: Any) -> None:
    """A saved step counter: one integral value >= 0."""
    t = _tensor(where, "step", value)
    if t.numel() != 1 or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{where} state 'step' must hold one real number, got shape {tuple(t.shape)} "
                         f"and dtype {t.dtype}")
    step = float(t.detach().reshape(()).to("cpu", torch.float64))
    if not (step >= 0 and step == math.floor(step)):
        raise ValueError(f"{where} state 'step' must be a non-negative integer, got {step}")


def check_cells(where: str, name: str, value: Any, shape: tuple[int, ...]) -> None:
    """A saved per-cell slot (a row/block/tensor envelope): a real floating tensor of its shape."""
    t = _tensor(where, name, value)
    if not t.is_floating_point() or tuple(t.shape) != tuple(shape):
        raise ValueError(f"{where} state {name!r} must be a floating tensor of shape {tuple(shape)}, got shape "
                         f"{tuple(t.shape)} and dtype {t.dtype}")


def check_entry(where: str, rule: UpdateRule, shape: tuple[int, ...], saved: dict[str, Any],
                saved_block: int) -> None:
    """Raise ``ValueError`` naming ``where`` and the key unless ``saved`` is the full-size state
    ``rule`` keeps for a parameter of real ``shape``: its names, and per slot a tensor of its
    cell shape (element slots: in a storage format, block-scaled ones with
    ``ceil(numel/saved_block)`` scales)."""
    slots = state_layout.slots(rule)
    allowed = {s.name for s in slots} | {state_layout.scale_key(s.name) for s in state_layout.element_slots(rule)}
    allowed |= {state_layout.tensor_scale_key(s.name) for s in state_layout.element_slots(rule)}
    step = state_layout.STEP_KEY
    if rule.keeps_step():
        allowed.add(step)
    unknown = sorted(str(k) for k in saved if k not in allowed)
    missing = [s.name for s in slots if s.name not in saved] + (
        [step] if rule.keeps_step() and step not in saved else [])
    if unknown or missing:
        raise ValueError(f"{where} holds state {sorted(map(str, saved))}; rule {rule.identity()!r} keeps "
                         f"{sorted(allowed)} (unknown: {unknown}, missing: {missing})")
    numel = math.prod(shape)
    for slot in slots:
        name = slot.name
        if not state_layout.per_element(rule, slot):
            check_cells(where, name, saved[name], state_layout.cell_shape(rule, slot, shape))
            continue
        t = _tensor(where, name, saved[name])
        scale_name = state_layout.scale_key(name)
        scales = saved.get(scale_name)
        try:
            fmt = state_layout.format_of(t, scales if isinstance(scales, torch.Tensor) else None)
        except ValueError:
            raise ValueError(f"{where} state {name!r} has dtype {t.dtype}; state formats are stored as "
                             f"{sorted(set(str(FORMATS[f].dtype) for f in STATE_FORMATS))}") from None
        need = ((numel + 1) // 2,) if FORMATS[fmt].packed else tuple(shape)
        if tuple(t.shape) != need:
            raise ValueError(f"{where} state {name!r} has shape {tuple(t.shape)} ({t.numel()} elements); "
                             f"the parameter needs {need} ({numel} elements"
                             + (", two 4-bit codes a byte)" if FORMATS[fmt].packed else ")"))
        if FORMATS[fmt].block_scaled:
            scale = _tensor(where, scale_name, saved.get(scale_name))
            blocks = state_layout.blocks(numel, saved_block)
            e8m0 = FORMATS[fmt].scale == "e8m0"
            if not (e8m0 or scale.is_floating_point()) or scale.numel() != blocks:
                raise ValueError(f"{where} state {scale_name!r} must hold {blocks} "
                                 f"{'E8M0 (uint8)' if e8m0 else 'floating'} scales (blocks of "
                                 f"{saved_block}), got {scale.numel()} of dtype {scale.dtype}")
        elif scale_name in saved:
            raise ValueError(f"{where} state {scale_name!r} is an FP8 scale, but {name!r} is stored as {fmt}")
        tscale_name = state_layout.tensor_scale_key(name)
        if FORMATS[fmt].tensor_scale:
            ts = _tensor(where, tscale_name, saved.get(tscale_name))
            if not ts.is_floating_point() or ts.numel() != 1:
                raise ValueError(f"{where} state {tscale_name!r} must hold 1 floating tensor scale, got "
                                 f"{ts.numel()} of dtype {ts.dtype}")
        elif tscale_name in saved:
            raise ValueError(f"{where} state {tscale_name!r} is a tensor scale, but {name!r} is stored as {fmt}")
    if step in saved:
        check_step(where, saved[step])


def restore_entry(rule: UpdateRule, saved: dict[str, Tensor], saved_block: int, fmt: str,
                  device: torch.device, shape: tuple[int, ...] | None = None) -> dict[str, Tensor]:
    """A checked full-size saved entry as new tensors on ``device``: element slots converted into
    ``fmt`` with blocks of ``rule.state_block``, envelope cells fp32, the step int64 on the CPU
    (``shape``: the parameter's real shape, which packed 4-bit codes need)."""
    restored = {}
    for slot in state_layout.slots(rule):
        if state_layout.per_element(rule, slot):
            restored.update(state_layout.convert(rule, saved, slot, saved_block, fmt, device, shape))
        else:
            restored[slot.name] = saved[slot.name].detach().to(device=device, dtype=torch.float32).clone()
    step = state_layout.STEP_KEY
    if step in saved:
        restored[step] = saved[step].detach().to(device="cpu", dtype=torch.int64).clone()
    return restored

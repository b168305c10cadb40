"""Where a rule's state lives: which tensors a parameter's state dict holds, their shapes and
storage formats, the pairing of FP8 codes with their scales, and the reduction segments.

Derived from :mod:`signopt.declaration` (a rule's slots and cells) and :mod:`signopt.state_format`
(the codecs). Every backend, the optimizer, the wrapper, checkpoints, sharding and the benchmarks
allocate, read, write and walk state through this module only.

A slot of cell ``"element"`` (``m``, ``v``, an element envelope ``G``) holds one value per element
of the parameter's real view, stored in the group's state format (FP8: codes of the parameter's
shape plus one scale per ``state_block`` flattened elements under :func:`scale_key`: fp32, or an
E8M0 byte for the MX formats); an
envelope ``G`` of a row, block or tensor envelope holds one fp32 value per cell. Tensors with fewer
than ``fp8_min_numel`` elements keep fp32 state in an FP8 group.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from . import declaration, state_format
from .declaration import FORMATS, SCALE_KEY, Slot
from .rule import UpdateRule

STEP_KEY = "step"


def scale_key(name: str) -> str:
    """The state key of slot ``name``'s FP8 scales."""
    return SCALE_KEY.format(name)


def is_scale_key(key: str) -> bool:
    return any(key == scale_key(s.name) for s in (declaration.M, declaration.V, declaration.G))


def tensor_scale_key(name: str) -> str:
    """The state key of slot ``name``'s per-tensor fp32 scale (NVFP4: ``state_scale="e4m3"``)."""
    return declaration.TENSOR_SCALE_KEY.format(name)


def is_tensor_scale_key(key: str) -> bool:
    return any(key == tensor_scale_key(s.name) for s in (declaration.M, declaration.V, declaration.G))


def slots(rule: UpdateRule) -> tuple[Slot, ...]:
    """The state slots ``rule`` keeps (besides its step counter)."""
    return declaration.family_slots(rule.family, rule.base)


def cell(rule: UpdateRule, slot: Slot) -> str:
    """``"element"``, or the envelope cell (``"row"``, ``"block"``, ``"tensor"``) of ``slot``."""
    return rule.envelope if slot.cell == "envelope" else "element"


def per_element(rule: UpdateRule, slot: Slot) -> bool:
    """Whether ``slot`` keeps one value per element (stored in the state format)."""
    return cell(rule, slot) == "element"


def element_slots(rule: UpdateRule) -> tuple[Slot, ...]:
    return tuple(s for s in slots(rule) if per_element(rule, s))


def rows(shape: tuple[int, ...]) -> int:
    """Rows of a tensor of ``shape`` for row cells (``x.reshape(shape[0], -1)``; one row below 2-D)."""
    return shape[0] if len(shape) >= 2 else 1


def cell_shape(rule: UpdateRule, slot: Slot, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of ``slot``'s tensor for a parameter (real view) of ``shape``."""
    c = cell(rule, slot)
    if c == "element":
        return tuple(shape)
    if c == "row":
        return (rows(shape),)
    if c == "block":
        return (-(-math.prod(shape) // rule.envelope_block),)
    return (1,)


def segment(rule: UpdateRule, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(segment length, segments)`` of the reduction ``rule`` runs over a tensor (real view)
    of ``shape`` before its update (a kappa norm per tensor or row, an envelope max per row,
    block or tensor), or None for an elementwise rule."""
    if rule.family == "lion":
        where = declaration.KAPPA_SEGMENT.get(rule.kappa)
    elif rule.family == "stochastic" and rule.envelope != "element":
        where = rule.envelope
    else:
        where = None
    n = math.prod(shape)
    if where is None:
        return None
    if where == "row":
        return n // rows(shape), rows(shape)
    if where == "block":
        return rule.envelope_block, -(-n // rule.envelope_block)
    return n, 1


def effective_format(rule: UpdateRule, numel: int) -> str:
    """The state format of a tensor of ``numel`` elements (of the full tensor when sharded):
    the rule's, except that a block-scaled format falls back to fp32 below ``fp8_min_numel``."""
    fmt = rule.state_dtype
    if FORMATS[fmt].block_scaled and numel < rule.fp8_min_numel:
        return "fp32"
    return fmt


def format_of(stored: Tensor, scales: Tensor | None = None) -> str:
    """The state format of a stored element-slot tensor (its codes when block-scaled) with its
    block scales ``scales`` (None: not known, or none): FP8 codes with E8M0 (uint8) scales are
    MX, with fp32 (or no) scales the fp32-scaled FP8 format."""
    scale_type = "fp32"  # no scales, or fp32 (any floating dtype but E4M3) ones
    for name, dtype in declaration.SCALE_TYPES.items():
        if scales is not None and scales.dtype == dtype:
            scale_type = name
    for f in FORMATS.values():
        if f.state and stored.dtype == f.dtype and (not f.block_scaled or f.scale == scale_type):
            return f.name
    raise ValueError(f"state tensor of dtype {stored.dtype}"
                     + (f" with scales of dtype {scales.dtype}" if scales is not None else "")
                     + " is not a signopt state format")


def stored_format(rule: UpdateRule, state: dict) -> str:
    """The format a parameter's element slots are stored in (``"fp32"`` when it has none)."""
    for s in element_slots(rule):
        return format_of(*stored(rule, state, s))
    return "fp32"


def blocks(numel: int, block: int) -> int:
    return -(-numel // block)


def allocate(rule: UpdateRule, shape: tuple[int, ...], numel: int, device: torch.device) -> dict[str, Tensor]:
    """Zero state for a parameter whose real view (local shard) has ``shape`` and whose full
    tensor has ``numel`` real elements: every slot, its scales, and the step counter (rules
    that keep one, on the CPU)."""
    fmt = FORMATS[effective_format(rule, numel)]
    st: dict[str, Tensor] = {}
    for s in slots(rule):
        if not per_element(rule, s):
            st[s.name] = torch.zeros(cell_shape(rule, s, shape), dtype=torch.float32, device=device)
            continue
        codes_shape = ((math.prod(shape) + 1) // 2,) if fmt.packed else shape
        st[s.name] = torch.zeros(codes_shape, dtype=fmt.dtype, device=device)
        if fmt.block_scaled:
            st[scale_key(s.name)] = torch.zeros(blocks(math.prod(shape), rule.state_block),
                                                dtype=declaration.scale_dtype(fmt.name), device=device)
        if fmt.tensor_scale:
            st[tensor_scale_key(s.name)] = torch.zeros(1, dtype=torch.float32, device=device)
    if rule.keeps_step():
        st[STEP_KEY] = torch.tensor(0, dtype=torch.int64)
    return st


def stored(rule: UpdateRule, state: dict, slot: Slot) -> tuple[Tensor, Tensor | None]:
    """``slot``'s stored tensor and its FP8 scales (None unless block-scaled)."""
    return state[slot.name], state.get(scale_key(slot.name))


def read(rule: UpdateRule, state: dict, slot: Slot, shape: tuple[int, ...] | None = None) -> Tensor:
    """The fp32 value of ``slot`` (``shape``: the parameter's real shape, which packed 4-bit
    codes need)."""
    codes, scales = stored(rule, state, slot)
    if scales is not None and FORMATS[format_of(codes, scales)].block_scaled:
        return state_format.decode(codes, scales, rule.state_block, None if shape is None else tuple(shape),
                                   state.get(tensor_scale_key(slot.name)))
    return codes.to(torch.float32)


def write(rule: UpdateRule, state: dict, slot: Slot, value: Tensor, word: Tensor | None = None,
          skip: Tensor | None = None) -> None:
    """Store fp32 ``value`` into ``slot`` in place, in its current format (``word``: Philox
    state-rounding word, stochastic rounding); where the 0-dim bool ``skip`` is true every stored
    tensor keeps its old bits. Envelope cells are fp32 and stored as they are."""
    if not per_element(rule, slot):
        new = value.to(torch.float32)
        target = state[slot.name]
        target.copy_(new if skip is None else torch.where(skip.to(target.device), target, new))
        return
    codes, scales = stored(rule, state, slot)
    tscale = state.get(tensor_scale_key(slot.name))
    new_codes, new_scales, new_tscale = state_format.encode_state(value, format_of(codes, scales),
                                                                  rule.state_block, word)
    for target, new in ((codes, new_codes), (scales, new_scales), (tscale, new_tscale)):
        if target is None:
            continue
        if skip is not None:
            new = torch.where(skip.to(target.device), target, new)
        target.copy_(new)


def convert(rule: UpdateRule, saved: dict, slot: Slot, saved_block: int, fmt: str,
            device: torch.device, shape: tuple[int, ...] | None = None) -> dict[str, Tensor]:
    """Element slot ``slot`` of a loaded ``saved`` dict (FP8 blocks of ``saved_block``),
    re-encoded into ``fmt`` with blocks of ``rule.state_block`` (nearest) on ``device``, as the
    state entries it makes; the stored bits are copied unchanged when format and block match."""
    codes = saved[slot.name].to(device)
    scales = saved.get(scale_key(slot.name))
    tscale = saved.get(tensor_scale_key(slot.name))
    tscale = None if tscale is None else tscale.to(device, torch.float32)
    src = format_of(codes, scales)
    block_scaled = FORMATS[fmt].block_scaled
    if src == fmt and (not block_scaled or saved_block == rule.state_block):
        out = {slot.name: codes.clone()}
        if block_scaled:
            out[scale_key(slot.name)] = scales.to(device, declaration.scale_dtype(fmt)).clone()
        if FORMATS[fmt].tensor_scale:
            out[tensor_scale_key(slot.name)] = tscale.reshape(1).clone()
        return out
    if FORMATS[src].block_scaled:
        scales = scales.to(device)
        numel = math.prod(shape) if FORMATS[src].packed else codes.numel()
        if scales.numel() != blocks(numel, saved_block):
            raise ValueError(f"state {slot.name!r}: {scales.numel()} scales do not fit {numel} "
                             f"elements in blocks of {saved_block}")
        value = state_format.decode(codes, scales, saved_block, None if shape is None else tuple(shape), tscale)
    else:
        value = codes.to(torch.float32)
    new_codes, new_scales, new_tscale = state_format.encode_state(value, fmt, rule.state_block)
    out = {slot.name: new_codes}
    if new_scales is not None:
        out[scale_key(slot.name)] = new_scales
    if new_tscale is not None:
        out[tensor_scale_key(slot.name)] = new_tscale
    return out


def entries(rule: UpdateRule, state: dict) -> Iterator[tuple[str, Tensor, str]]:
    """Every state tensor with what it is: ``"slot"``, ``"scales"`` or ``"step"``."""
    for key, t in state.items():
        if isinstance(t, Tensor):
            yield key, t, ("step" if key == STEP_KEY else "scales" if is_scale_key(key) or is_tensor_scale_key(key)
                           else "slot")


def cell_of_key(rule: UpdateRule, key: str) -> str | None:
    """The cell of the slot stored under ``key`` (None for scales and the step counter)."""
    for s in slots(rule):
        if s.name == key:
            return cell(rule, s)
    return None


def vector_cell(rule: UpdateRule, key: str, numel: int | None = None) -> int | None:
    """Elements of the flattened tensor per entry of a per-block state vector (FP8 scales, a
    block envelope, packed 4-bit codes: 2), else None; ``numel`` (of the full tensor) tells
    whether a packed format's element slot falls back to fp32."""
    if is_scale_key(key):
        return rule.state_block
    if numel is not None and cell_of_key(rule, key) == "element" and FORMATS[effective_format(rule, numel)].packed:
        return 2
    if key == declaration.G.name and rule.stochastic and rule.envelope == "block":
        return rule.envelope_block
    return None


def nbytes(state: dict) -> int:
    """Bytes held by the tensors of one parameter's state."""
    return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, Tensor))

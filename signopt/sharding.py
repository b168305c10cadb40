"""DTensor / FSDP2 parameters: what a signopt optimizer steps on, and how its state is laid out.

A DTensor parameter is stepped on its local shard only; backends receive plain local tensors
through :class:`~signopt.backends.slot.ParamSlot` and never see a DTensor. For a parameter
``p`` with placements over a device mesh:

* **index offset.** Random bits (stochastic sign, stochastic rounding) are drawn from the
  element's flat index in the full tensor (of its real view for complex ``p``). When the local
  elements form one contiguous range ``[offset, offset + n)`` of the full flattened tensor --
  every ``Shard`` placement is ``Shard(0)``, as FSDP2's default (its padding is not part of
  the DTensor's local tensor) -- ``offset`` is the slot's ``index_offset`` and a sharded run
  draws exactly the bits of an unsharded one. Other shardings (``Shard(d>0)``,
  ``_StridedShard``) run only rules that draw no random bits and need no blocks or reductions.
* **state.** Element-wise state (moments, element envelopes, FP8 codes) is a DTensor with the
  parameter's placements, so ``torch.distributed.checkpoint`` saves and reshards it natively.
  Per-row envelopes are a ``(rows,)`` DTensor with the same placements (rows = dim 0 stay
  whole on a ``Shard(0)`` shard). Per-block vectors -- FP8 scales (``state_block``), block
  envelopes (``envelope_block``) and packed 4-bit codes (two elements a byte) -- are defined over the **full** flattened tensor, exactly as
  unsharded, so sharded and unsharded runs quantise identically and a checkpoint does not
  depend on the world size. Under sharding each rank keeps the plain local tensor of its own
  blocks; this needs every shard boundary on a block boundary (checked at construction; FSDP2
  boundaries are multiples of ``ceil(dim0/world) * row_numel``). ``state_dict()`` presents
  them as the full vector (a replicated DTensor: one all-gather of ``numel/block`` values per
  tensor, so ``state_dict()`` is collective: call it on every rank, as DCP does).
  Loading gathers each saved tensor to full size, converts it (format/block changes), and
  keeps the local slice: one all-gather per state tensor, transient memory of one full tensor.
* **whole-tensor reductions are refused, never approximated per shard.** Lion-kappa ``l2``
  and ``lp`` (tensor norm), ``row_l2`` and row envelopes whose rows are split (1-D tensors,
  ``Shard(d>0)``), tensor envelopes, block envelopes with unaligned shard boundaries,
  ``cautious`` (count of kept elements) and callable kappas (unless marked
  ``fn.elementwise = True``) raise ``ValueError`` at construction and at ``step``. Reducing
  them across the shard group would cost one extra all-reduce per tensor per step (8 bytes of
  fp64 partial sums, an int64 count or an fp32 max per row/block -- latency-bound, about one
  loopback round trip each on gloo) and a second pass inside every fused kernel; signopt does
  not do that. Replicated placements and meshes of size one are whole tensors: everything runs.
"""
from __future__ import annotations

import itertools
import math
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from . import declaration, state_layout
from .rule import UpdateRule


class _Absent:
    """Stands for DTensor types while ``torch.distributed.tensor`` is not imported (then no
    DTensor can exist, and importing signopt does not import the distributed stack)."""


def _dtensor_types() -> tuple[type, type, type]:
    mod = sys.modules.get("torch.distributed.tensor")
    if mod is None:
        return _Absent, _Absent, _Absent
    return mod.DTensor, mod.Shard, mod.Replicate


@dataclass(frozen=True)
class ShardLayout:
    """Where a DTensor parameter's local shard sits in the full tensor (real view for complex).

    ``offset`` is the flat index of the first local element (meaningful when ``contiguous``);
    ``starts`` the flat starts of every rank's non-empty contiguous range (shard boundaries).
    """

    shape: tuple[int, ...]
    local_shape: tuple[int, ...]
    global_offset: tuple[int, ...]
    split: bool
    contiguous: bool
    offset: int
    starts: tuple[int, ...]
    unsupported_placement: str | None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def local_numel(self) -> int:
        return math.prod(self.local_shape)

    def aligned(self, block: int) -> bool:
        """Every shard boundary is a multiple of ``block`` elements."""
        return all(s % block == 0 for s in self.starts)


# Exact types that are never DTensors (nn.Parameter wrapping a DTensor keeps the DTensor type), so
# the per-tensor checks of a step cost one type() for ordinary parameters.
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def is_dtensor(t: object) -> bool:
    return type(t) not in _PLAIN_TYPES and isinstance(t, _dtensor_types()[0])


def local(t: Tensor) -> Tensor:
    """The local tensor of a DTensor (aliasing its storage), ``t`` itself otherwise."""
    return t.to_local().detach() if is_dtensor(t) else t


def real_shape(t: Tensor) -> tuple[int, ...]:
    """The full (global) shape of ``t``'s real view (complex: a trailing 2)."""
    return tuple(t.shape) + ((2,) if t.is_complex() else ())


def _dim0_ranges(rows: int, mesh_shape: tuple[int, ...], placements: tuple) -> list[tuple[int, int]]:
    """Row ranges of every mesh coordinate under ``Shard(0)``/``Replicate`` placements
    (``torch.chunk`` semantics applied mesh dim by mesh dim, as DTensor does)."""
    _, Shard, _ = _dtensor_types()
    out = []
    for coord in itertools.product(*(range(s) for s in mesh_shape)):
        a, b = 0, rows
        for c, size, pl in zip(coord, mesh_shape, placements):
            if isinstance(pl, Shard):
                length = b - a
                chunk = -(-length // size)
                start = min(c * chunk, length)
                a, b = a + start, a + min(start + chunk, length)
        out.append((a, b))
    return out


def layout(p: Tensor) -> ShardLayout | None:
    """The :class:`ShardLayout` of a DTensor parameter, ``None`` for a plain tensor."""
    if not is_dtensor(p):
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    _, Shard, Replicate = _dtensor_types()
    mesh, placements = p.device_mesh, tuple(p.placements)
    mesh_shape = tuple(mesh.shape)
    shape = real_shape(p)
    bad = [pl for pl in placements if not (type(pl) is Shard or isinstance(pl, Replicate))]
    unsupported = (f"placements {placements} (only Shard and Replicate parameters are stepped)"
                   if bad else None)
    split = any(not isinstance(pl, Replicate) and size > 1 for pl, size in zip(placements, mesh_shape))
    loc_shape, glob_off = compute_local_shape_and_global_offset(p.shape, mesh, placements)
    loc_shape = tuple(loc_shape) + shape[len(p.shape):]
    glob_off = tuple(glob_off) + (0,) * (len(shape) - len(p.shape))
    contiguous = not bad and all(pl.dim == 0 for pl in placements if isinstance(pl, Shard))
    if len(shape) == 0:
        contiguous = True
    offset, starts = 0, ()
    if contiguous and len(shape) > 0:
        row = math.prod(shape[1:])
        offset = glob_off[0] * row
        ranges = _dim0_ranges(shape[0], mesh_shape, placements)
        starts = tuple(sorted({a * row for a, b in ranges if b > a and a > 0}))
        coord = mesh.get_coordinate()
        if coord is not None:
            a, b = _dim0_ranges_at(shape[0], mesh_shape, tuple(coord), placements)
            if (a, b - a) != (glob_off[0], loc_shape[0]) or loc_shape[1:] != shape[1:]:
                raise RuntimeError(f"DTensor shard of shape {loc_shape} at {glob_off} of a tensor "
                                   f"of shape {shape} is not the chunk signopt expects ({a}:{b})")
    return ShardLayout(shape, loc_shape, glob_off, split, contiguous, offset, starts, unsupported)


# ------------------------------------------------------------------ refusals
_ROW_REDUCTIONS = {"norm": "row norms", "max": "row maxima"}


def _reductions(rule: UpdateRule, lay: ShardLayout) -> list[str]:
    """What ``rule`` would need reduced across shards of ``lay`` (empty: runs shard-locally)."""
    rows_whole = lay.contiguous and len(lay.shape) >= 2
    need = []
    if rule.family == "lion":  # a norm per tensor or row
        cell, what, reduces = declaration.KAPPA_SEGMENT.get(rule.kappa), f"kappa={rule.kappa!r}", "norm"
        if rule.kappa == "callable" and not getattr(rule.kappa_fn, "elementwise", False):
            need.append("a callable kappa would see only the local shard (mark it "
                        "`fn.elementwise = True` if it is element-wise)")
    elif rule.stochastic:  # a max per row, block or tensor
        cell, what, reduces = rule.envelope, f"envelope={rule.envelope!r}", "max"
    else:
        cell = None
    if cell == "tensor":
        need.append(f"{what} needs the {reduces} {'of' if reduces == 'norm' else 'over'} the whole tensor")
    if cell == "row" and not rows_whole:
        need.append(f"{what} needs {_ROW_REDUCTIONS[reduces]} and this sharding splits rows")
    if cell == "block" and not (lay.contiguous and lay.aligned(rule.envelope_block)):
        need.append(f"{what} needs shard boundaries on multiples of "
                    f"envelope_block={rule.envelope_block} (boundaries at {list(lay.starts)})")
    if rule.cautious:
        need.append("cautious needs the count of kept elements over the whole tensor")
    return need


def unsupported(rule: UpdateRule, p: Tensor) -> str | None:
    """Why ``rule`` cannot step DTensor ``p`` on its shard (``None``: it can, or ``p`` is plain)."""
    lay = layout(p)
    if lay is None:
        return None
    where = f"a DTensor parameter of shape {tuple(p.shape)} with placements {tuple(p.placements)}"
    if lay.unsupported_placement:
        return f"{where}: {lay.unsupported_placement}"
    if not lay.split:
        return None
    need = _reductions(rule, lay)
    if rule.draws_random_bits and not lay.contiguous:
        need.append("random bits are keyed by the full-tensor index, which needs Shard(0)")
    fmt = state_layout.effective_format(rule, lay.numel)
    if declaration.FORMATS[fmt].block_scaled and not (lay.contiguous and lay.aligned(rule.state_block)):
        need.append(f"state_dtype={rule.state_dtype!r} keeps one scale per state_block="
                    f"{rule.state_block} elements of the full tensor and needs Shard(0) boundaries "
                    f"on block boundaries (boundaries at {list(lay.starts)}); pick a state_block "
                    f"dividing them or raise fp8_min_numel above {lay.numel} for this tensor")
    if declaration.FORMATS[fmt].tensor_scale:
        need.append(f"{declaration.options_of(rule.state_dtype)} keeps one fp32 scale per "
                    "tensor, from the absmax of the whole tensor")
    if not need:
        return None
    return (f"{where} is sharded, and " + "; ".join(need)
            + ". signopt refuses rather than approximate per shard")


# --------------------------------------------------------------------- state
def _global_state_shape(rule: UpdateRule, name: str, lay: ShardLayout) -> tuple[int, ...]:
    for slot in state_layout.slots(rule):
        if slot.name == name:
            return state_layout.cell_shape(rule, slot, lay.shape)
    return lay.shape


def _keeps_local(rule: UpdateRule, name: str, lay: ShardLayout) -> bool:
    return name == state_layout.STEP_KEY or (lay.split and state_layout.vector_cell(rule, name, lay.numel) is not None)


def wrap_state(p: Tensor, rule: UpdateRule, st: dict) -> None:
    """Turn freshly allocated local state of DTensor ``p`` into DTensors, in place (see module
    docstring: per-block vectors of a split tensor and ``step`` stay plain)."""
    lay = layout(p)
    if lay is None:
        return
    DTensor = _dtensor_types()[0]
    for name, t in list(st.items()):
        if isinstance(t, DTensor) or _keeps_local(rule, name, lay):
            continue
        shape = _global_state_shape(rule, name, lay) if lay.split else tuple(t.shape)
        st[name] = DTensor.from_local(t, p.device_mesh, p.placements, run_check=False,
                                      shape=torch.Size(shape), stride=_contiguous_stride(shape))


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(stride))


def local_state(st: dict) -> dict:
    """The state as the backends see it: every DTensor replaced by its local tensor."""
    return {k: local(v) for k, v in st.items()}


def _cells(lay: ShardLayout, cell: int) -> tuple[int, int]:
    """The local range ``[start, start + count)`` of a per-block vector of ``cell`` elements."""
    return lay.offset // cell, -(-lay.local_numel // cell)


def export_state(p: Tensor, rule: UpdateRule, st: dict) -> dict:
    """``st`` with per-block vectors of a split DTensor ``p`` replaced by the full vector as a
    replicated DTensor (collective: one all-gather per vector). Other entries are shared."""
    lay = layout(p)
    if lay is None or not lay.split:
        return st
    DTensor, Shard, Replicate = _dtensor_types()
    out = dict(st)
    mesh, placements = p.device_mesh, tuple(p.placements)
    for name, t in st.items():
        cell = state_layout.vector_cell(rule, name, lay.numel)
        if cell is None:
            continue
        total = -(-lay.numel // cell)
        ranges = _dim0_ranges(lay.shape[0], tuple(mesh.shape), placements)
        row = math.prod(lay.shape[1:])
        width = max((-(-(b - a) * row // cell) for a, b in ranges), default=0)
        padded = torch.zeros(width, dtype=t.dtype, device=t.device)
        padded[: t.numel()] = t
        slots = math.prod(s for s, pl in zip(mesh.shape, placements) if isinstance(pl, Shard))
        gathered = DTensor.from_local(padded, mesh, placements, run_check=False,
                                      shape=torch.Size((slots * width,)), stride=(1,)).full_tensor()
        full = torch.zeros(total, dtype=t.dtype, device=t.device)
        for coord in itertools.product(*(range(s) for s in mesh.shape)):
            _, (poff,) = _local_offset((slots * width,), tuple(mesh.shape), coord, placements)
            a, b = _dim0_ranges_at(lay.shape[0], tuple(mesh.shape), coord, placements)
            if b > a:
                start, count = (a * row) // cell, -(-((b - a) * row) // cell)
                full[start:start + count] = gathered[poff:poff + count]
        out[name] = DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return out


def _dim0_ranges_at(rows: int, mesh_shape: tuple[int, ...], coord: tuple[int, ...],
                    placements: tuple) -> tuple[int, int]:
    index = 0
    for c, s in zip(coord, mesh_shape):
        index = index * s + c
    return _dim0_ranges(rows, mesh_shape, placements)[index]


def _local_offset(shape: tuple[int, ...], mesh_shape: tuple[int, ...], coord: tuple[int, ...],
                  placements: tuple) -> tuple[tuple[int, ...], tuple[int, ...]]:
    a, b = _dim0_ranges_at(shape[0], mesh_shape, coord, placements)
    return (b - a,), (a,)


_BITS = {1: torch.uint8, 2: torch.float16, 4: torch.int32, 8: torch.int64}  # gloo-gatherable


def full(value: object) -> object:
    """A state value at full size: DTensors are all-gathered (collective; as raw bits, since
    gloo cannot gather FP8), anything else is returned as is."""
    if not is_dtensor(value):
        return value
    DTensor = _dtensor_types()[0]
    loc = value.to_local()
    bits = _BITS[loc.element_size()]
    raw = DTensor.from_local(loc.contiguous().view(bits), value.device_mesh, value.placements,
                             run_check=False, shape=value.shape, stride=value.stride())
    return raw.full_tensor().view(loc.dtype)


def shard_state(p: Tensor, rule: UpdateRule, restored: dict) -> dict:
    """Full-size state of DTensor ``p`` (as an unsharded optimizer keeps it) -> this rank's
    shard, laid out as :func:`wrap_state` does. Plain ``p``: returned unchanged."""
    lay = layout(p)
    if lay is None:
        return restored
    out = {}
    for name, t in restored.items():
        if name == state_layout.STEP_KEY:
            out[name] = t
            continue
        cell = state_layout.vector_cell(rule, name, lay.numel)
        if lay.split and cell is not None:
            start, count = _cells(lay, cell)
            out[name] = t.reshape(-1)[start:start + count].clone()
            continue
        if lay.split and state_layout.cell_of_key(rule, name) == "row":
            rows, offs = lay.local_shape[:1], lay.global_offset[:1]
        elif lay.split:
            rows, offs = lay.local_shape, lay.global_offset
        else:
            out[name] = t
            continue
        piece = t
        for dim, (size, off) in enumerate(zip(rows, offs)):
            piece = piece.narrow(dim, off, size)
        out[name] = piece.contiguous().clone()
    wrap_state(p, rule, out)
    return out


def check_grad(p: Tensor, where: str) -> None:
    """A DTensor parameter's gradient must be a DTensor with the same placements and mesh."""
    if not is_dtensor(p):
        return
    g = p.grad
    if not is_dtensor(g) or tuple(g.placements) != tuple(p.placements) \
            or g.device_mesh != p.device_mesh:
        got = (f"placements {tuple(g.placements)}" if is_dtensor(g)
               else f"a plain {type(g).__name__}")
        raise RuntimeError(f"gradient of the DTensor parameter of shape {tuple(p.shape)} "
                           f"({where}) has {got}; expected placements {tuple(p.placements)} on "
                           "the same mesh (redistribute it, or let FSDP2 reduce it)")


def index_offset(p: Tensor) -> int:
    """The ParamSlot ``index_offset`` of ``p``: 0 for plain tensors and non-contiguous shards
    (which run no rule that draws random bits)."""
    lay = layout(p)
    return lay.offset if lay is not None and lay.contiguous else 0


__all__ = ["ShardLayout", "layout", "local", "is_dtensor", "unsupported", "wrap_state",
           "local_state", "export_state", "full", "shard_state", "check_grad", "index_offset"]

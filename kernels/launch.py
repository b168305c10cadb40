"""Host side of the Triton backend: tables, partitions and the launches of one step.

Multi-tensor layout: a device-side table, not a flat buffer
-----------------------------------------------------------
A flat layout (all parameters, gradients and states in one contiguous buffer per dtype) gives
the simplest kernel, but only if signopt owns the storage: user parameters, their ``.grad`` and
FSDP shards live in separate allocations, so a flat step would first copy every tensor in and
the results back out — three extra reads/writes per element on a kernel that is itself a pure
memory stream (Lion moves 4 fp32 words per element: read p, g, m; write p, m; the copies would
roughly double the traffic). The table layout reads each tensor where it lives: the host writes
one int64 row per tensor (addresses, numel, Philox seed, offsets; :mod:`.layout`) and one int32
entry per program naming its tensor; a program loads its row and turns the addresses back into
typed pointers. Its cost is one 4-byte table read per ``UPDATE_BLOCK`` elements plus a few
uncached scalar loads per program, negligible next to ``UPDATE_BLOCK`` x 16+ bytes of data.

Launches: one per pass per (param group, param dtype, grad dtype, state format) partition,
whatever the number of tensors: the update pass, plus two passes (chunk partials, segment
finalize) for each reduction stage a rule needs (reducing kappa or a row/block/tensor envelope;
cautious counts; NVFP4 state's per-tensor absmax of the new state, for its tensor scales), plus
one ``zeros`` for the non-finite counter.

Prepared steps: :func:`prepare` builds a :class:`Plan` for a group's slots once — partitions,
the tensor tables less this step's gradient addresses and Philox keys, block ids, reduction
tables, constexprs and grids — and the optimizer keeps it between steps; :meth:`Plan.run` only
fills in the step's gradient addresses (compared by ``data_ptr``), keys, bias corrections and
scalars, then launches.

No host synchronisation: the tables depend only on addresses, shapes and per-step host values
(Philox keys, AdamW bias corrections), so they are cached on the device by content (an LRU of
uploaded tables per partition, and one of small value tables) and uploaded with a non-blocking
copy from pinned memory when new. A tensor
``lr``/``decay`` is copied into the scalar table on the device (``torch.cat``), so a step with a
tensor lr and fixed addresses launches only kernels: it is capturable in a CUDA graph (rules
that draw random bits change their keys every step and so upload a new table each step).

Launch configuration: fixed per pass (:data:`CONFIG`), never autotuned — an autotuner re-runs
the kernel to time it, which would apply an in-place update several times. The values are the
usual memory-bound choices (1024 elements, 4 warps per program); they have not been tuned on a
GPU (none was available while writing this); ``bench/triton_gpu.py`` measures them.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from signopt import declaration, reference, state_layout
from signopt.declaration import FORMATS
from signopt.philox import triton_seed
from signopt.rule import UpdateRule
from signopt.scalars import GroupScalars, StepValues, f32

from . import layout as L
from . import passes

MAX_FP8_BLOCK = 8192  # one FP8 block is one row of an update tile, held in registers


@dataclass(frozen=True)
class LaunchConfig:
    """Fixed launch parameters (elements per program, warps). Powers of two."""

    update_block: int = 1024
    update_warps: int = 4
    reduce_block: int = 1024
    reduce_warps: int = 4
    finalize_segments: int = 128


CONFIG = LaunchConfig()

# The kernels' constexpr ids, all from signopt.declaration (``rules``/``numerics`` hold the same
# values as ``tl.constexpr`` for the jitted code).
PARAM_KINDS = {f.dtype: f.id for f in FORMATS.values() if f.param}
STATE_KINDS = {name: f.id for name, f in FORMATS.items() if f.state}
FAMILIES = declaration.FAMILIES
KAPPAS = declaration.KAPPAS
BASES = declaration.BASES
ENVELOPES = declaration.ENVELOPES


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unsupported(rule: UpdateRule, params: list[Tensor]) -> str | None:
    """Why these kernels cannot run ``rule`` on ``params`` (None if they can)."""
    if rule.kappa_fn is not None or rule.kappa == "callable":
        return "a callable kappa runs only on the torch backend"
    if FORMATS[rule.state_dtype].block_scaled and not 1 <= rule.state_block <= MAX_FP8_BLOCK:
        return f"FP8 state_block must be in [1, {MAX_FP8_BLOCK}] for the Triton kernels, got {rule.state_block}"
    for i, p in enumerate(params):
        dtype = real_dtype(p)
        if dtype not in PARAM_KINDS:
            return f"params[{i}] has dtype {p.dtype}; Triton kernels take float32, bfloat16, float16 (and complex of those)"
        if p.device.type == "cuda":
            if interpreting():
                return f"params[{i}] is on CUDA but TRITON_INTERPRET=1 runs Triton on the CPU"
        elif p.device.type == "cpu":
            if not interpreting():
                return f"params[{i}] is on the CPU; Triton kernels run on CUDA (or on CPU only under TRITON_INTERPRET=1)"
        else:
            return f"params[{i}] is on {p.device.type}; Triton kernels run on CUDA"
    return None


def real_dtype(t: Tensor) -> torch.dtype:
    return t.dtype.to_real()


def real_view(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


# ----------------------------------------------------------------------------- device cache
class DeviceTableCache:
    """Device copies of small host tables, keyed by their content (LRU).

    A hit returns the tensor uploaded earlier, so a step whose tables did not change launches
    no copy at all (what makes a tensor-lr step capturable)."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, Tensor] = OrderedDict()

    def table(self, device: torch.device, key: tuple, build: Callable[[], Tensor]) -> Tensor:
        """The device copy of the host tensor ``build()`` whose content ``key`` determines."""
        key = (device,) + key
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        host = build()
        dev = host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host
        self._entries[key] = dev
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return dev

    def values(self, values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A 1-D ``dtype`` tensor holding ``values`` on ``device``."""
        return self.table(device, (dtype, "values", values), lambda: torch.tensor(values, dtype=dtype))

    def ids(self, counts: tuple[int, ...], device: torch.device) -> Tensor:
        """int32 ``[0]*counts[0] + [1]*counts[1] + ...`` on ``device``."""
        return self.table(device, (torch.int32, "ids", counts), lambda: torch.repeat_interleave(
            torch.arange(len(counts), dtype=torch.int32), torch.tensor(counts, dtype=torch.int64)))


_CACHE = DeviceTableCache()
PLAN_TABLES = 8
"""Tables (this step's gradient addresses, keys, bias corrections) a prepared partition keeps
on the device, by content, besides the shared :data:`_CACHE` of small value tables."""


def _uploaded(values: list, dtype: torch.dtype, device: torch.device) -> Tensor:
    return _CACHE.values(tuple(values), dtype, device)


def _repeat_ids(counts: list[int], device: torch.device) -> Tensor:
    return _CACHE.ids(tuple(counts), device)


# ----------------------------------------------------------------------------- constexprs
def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def update_tile(rule: UpdateRule, state_kind: str, cfg: LaunchConfig) -> tuple[int, int, int]:
    """``(ROWS, COLS, SB)`` of the update tile: one FP8 block per row for FP8 state
    (``COLS`` = its next power of two), else one row of ``update_block`` elements."""
    if FORMATS[state_kind].block_scaled:
        cols = _pow2_at_least(rule.state_block)
        return max(1, cfg.update_block // cols), cols, rule.state_block
    return 1, cfg.update_block, cfg.update_block


def rule_flags(rule: UpdateRule, p_dtype: torch.dtype, g_dtype: torch.dtype, state_kind: str, *,
               has_l2: bool, has_inv_scale: bool) -> dict:
    """The constexprs shared by every pass: which rule, which storage kinds, which per-element
    state slots its kernel kind keeps (:func:`signopt.state_layout.element_slots`)."""
    s_kind = STATE_KINDS[state_kind]
    p_kind = PARAM_KINDS[p_dtype]
    element = state_layout.element_slots(rule)
    return dict(
        FAMILY=FAMILIES[rule.family], KAPPA=KAPPAS.get(rule.kappa, 0), BASE=BASES[rule.base],
        ENVELOPE=ENVELOPES[rule.envelope], ENV_FROM_GRAD=rule.envelope_source == "grad",
        MAXIMIZE=rule.maximize, HAS_L2=has_l2, HAS_INV_SCALE=has_inv_scale,
        P_KIND=p_kind, G_KIND=PARAM_KINDS[g_dtype], S_KIND=s_kind,
        HAS_M=declaration.M in element, HAS_V=declaration.V in element,
        ELEMENT_G=declaration.G in element,
    )


def _param_sr(rule: UpdateRule, p_kind: int) -> bool:
    return rule.param_rounding == "stochastic" and p_kind != FORMATS["fp32"].id


def _state_sr(rule: UpdateRule, s_kind: int) -> bool:
    return rule.state_rounding == "stochastic" and s_kind != FORMATS["fp32"].id


def update_constexprs(rule: UpdateRule, flags: dict, state_kind: str, has_found_inf: bool,
                      cfg: LaunchConfig, stats: bool = False) -> dict:
    """All constexprs of ``update_kernel`` (``stats``: with step statistics)."""
    rows, cols, sb = update_tile(rule, state_kind, cfg)
    return dict(flags, CAUTIOUS=rule.cautious, HAS_FOUND_INF=has_found_inf,
                STATE_SR=_state_sr(rule, flags["S_KIND"]), PARAM_SR=_param_sr(rule, flags["P_KIND"]),
                STATS=stats, ROWS=rows, COLS=cols, SB=sb)


def reduce_tile(longest_segment: int, cfg: LaunchConfig) -> tuple[int, int]:
    """``(UNITS, RBLOCK)`` of a chunk program: chunks of ``RBLOCK`` (the longest segment's
    next power of two, at most ``reduce_block``), ``UNITS`` of them per program."""
    rblock = min(cfg.reduce_block, max(16, _pow2_at_least(longest_segment)))
    return max(1, cfg.reduce_block // rblock), rblock


def state_sblk(rule: UpdateRule, state_kind: str) -> int:
    """The state block the kernels index scales by (1 for a format without block scales)."""
    return rule.state_block if FORMATS[state_kind].block_scaled else 1


def partials_per_chunk(want: int) -> int:
    """Partials a reduction chunk writes (and outputs a segment has): one per state slot for the
    NVFP4 state absmax, else one."""
    return int(L.N_TSCALES) if want == int(passes.WANT_STATE_ABSMAX) else 1


def reduce_constexprs(flags: dict, want: int, sblk: int, units: int, rblock: int) -> dict:
    """All constexprs of ``reduce_chunks_kernel``."""
    return dict(flags, WANT=want, SBLK=sblk, UNITS=units, RBLOCK=rblock)


def finalize_constexprs(flags: dict, want: int, has_found_inf: bool, cfg: LaunchConfig) -> dict:
    """All constexprs of ``reduce_finalize_kernel``."""
    return dict(FAMILY=flags["FAMILY"], KAPPA=flags["KAPPA"], HAS_FOUND_INF=has_found_inf,
                WANT=want, FSEGS=cfg.finalize_segments, NP=partials_per_chunk(want))


# ----------------------------------------------------------------------------- per-step values
def _scalar_table(sc: GroupScalars, state_kind: str, device: torch.device) -> Tensor:
    """The fp32 group scalar table (:data:`.layout.SCALARS32`); a tensor ``lr``/``decay`` is
    copied in on the device."""
    fmt = FORMATS[state_kind]
    extra = {"inv_qmax": f32(1.0 / fmt.max_finite) if fmt.block_scaled else 0.0}
    values = [extra[n] if n in extra else getattr(sc, n) for n in L.SCALARS32]
    if not any(isinstance(x, Tensor) for x in values):
        return _uploaded(values, torch.float32, device)
    parts, run = [], []
    for x in values:
        if isinstance(x, Tensor):
            if run:
                parts.append(_uploaded(run, torch.float32, device))
                run = []
            parts.append(x.reshape(1).to(device=device, dtype=torch.float32))
        else:
            run.append(x)
    if run:
        parts.append(_uploaded(run, torch.float32, device))
    return torch.cat(parts)


def _scalar_table64(sc: GroupScalars, device: torch.device) -> Tensor:
    """The fp64 group scalar table (:data:`.layout.SCALARS64`)."""
    return _uploaded([getattr(sc, n) for n in L.SCALARS64], torch.float64, device)


def _signed64(x: int) -> int:
    return x - (1 << 64) if x >= (1 << 63) else x


def _addr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


# ----------------------------------------------------------------------------- prepared step
@dataclass
class Item:
    """One tensor of a partition, as the kernels see it (contiguous real views)."""

    slot: int  # position among the prepared slots (its gradient, key and bias correction)
    param: Tensor
    state: dict[str, Tensor]  # the state tensors the kernels read and write, by state key
    numel: int
    index_offset: int
    segment: tuple[int, int] | None  # (length, segments) of the first reduction, or None
    sign: Tensor | None = None  # step statistics: the previous update signs (int8), or None


def _contiguous(t: Tensor, writeback: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``t`` itself when contiguous, else a contiguous work copy, refreshed from ``t`` before and
    written back to it after every step (``writeback`` keeps the pairs)."""
    if t.is_contiguous():
        return t
    work = t.contiguous()
    writeback.append((t, work))
    return work


@dataclass
class Reduction:
    """One reduction stage (chunk partials, then per-segment finalize) of a partition."""

    want: int
    rtab: Tensor
    units: Tensor
    seg_ids: Tensor
    n_units: int
    n_segs: int
    units_per_prog: int
    rblock: int


def _reduction(segments: list[tuple[int, int]], seg_base: list[int], want: int,
               device: torch.device, cfg: LaunchConfig) -> Reduction:
    longest = max(s[0] for s in segments)
    units_per_prog, rblock = reduce_tile(longest, cfg)
    unit_counts, rrows, base = [], [], 0
    for (seg_len, n_seg), sbase in zip(segments, seg_base):
        chunks = max(1, -(-seg_len // rblock))
        rrows.extend([base, chunks, max(seg_len, 1), sbase])
        unit_counts.append(chunks * n_seg)
        base += chunks * n_seg
    return Reduction(want, _uploaded(rrows, torch.int64, device), _repeat_ids(unit_counts, device),
                     _repeat_ids([s[1] for s in segments], device), base,
                     sum(s[1] for s in segments), units_per_prog, rblock)


class Partition:
    """The tensors one set of launches updates (same device, parameter and gradient dtypes,
    stored state format), with everything that depends only on them: the tensor table less
    this step's gradient addresses and keys, block ids, reduction tables, grids."""

    def __init__(self, rule: UpdateRule, items: list[Item], writeback: list[tuple[Tensor, Tensor]],
                 device: torch.device, p_dtype: torch.dtype, g_dtype: torch.dtype, state_kind: str,
                 cfg: LaunchConfig) -> None:
        self.rule, self.items, self.writeback, self.device = rule, items, writeback, device
        self.p_dtype, self.g_dtype, self.state_kind, self.cfg = p_dtype, g_dtype, state_kind, cfg
        self.slots = [it.slot for it in items]
        rows_per_prog, _, sb = update_tile(rule, state_kind, cfg)
        n_blocks = [-(-it.numel // (rows_per_prog * sb)) for it in items]
        self.total_blocks = sum(n_blocks)
        self.blk = _repeat_ids(n_blocks, device)

        has_a = items[0].segment is not None
        seg_base, acc = [], 0
        for it in items:
            seg_base.append(acc)
            acc += it.segment[1] if it.segment else 0
        tab: list[int] = []
        first = 0
        for it, nb, base in zip(items, n_blocks, seg_base):
            row = [0] * int(L.N_COLS)
            row[int(L.C_PARAM)] = it.param.data_ptr()
            for name, (col, scale_col, tscale_col) in L.SLOT_COLUMNS.items():
                row[int(col)] = _addr(it.state.get(name))
                row[int(scale_col)] = _addr(it.state.get(state_layout.scale_key(name)))
                row[int(tscale_col)] = _addr(it.state.get(state_layout.tensor_scale_key(name)))
            row[int(L.C_NUMEL)] = it.numel
            row[int(L.C_INDEX_OFFSET)] = it.index_offset
            row[int(L.C_FIRST_BLOCK)] = first
            row[int(L.C_SEG_BASE)] = base
            row[int(L.C_SEG_LEN)] = max(it.segment[0] if it.segment else 1, 1)
            row[int(L.C_SIGN)] = _addr(it.sign)
            tab.extend(row)
            first += nb
        self._tab = tab
        self._numel32 = [f32(float(it.numel)) for it in items]
        self.stats = items[0].sign is not None
        self._tabs = DeviceTableCache(PLAN_TABLES)
        self._ftabs = DeviceTableCache(PLAN_TABLES)

        self.sblk = state_sblk(rule, state_kind)
        self.stage_a = None
        if has_a:
            self.stage_a = _reduction([it.segment for it in items], seg_base, int(passes.WANT_STAGE_A),
                                      device, cfg)
        self.cautious = None
        if rule.cautious:
            self.cautious = _reduction([(it.numel, 1) for it in items], list(range(len(items))),
                                       int(passes.WANT_CAUTIOUS_COUNT), device, cfg)
        self.tensor_scales = None  # NVFP4: segment t is tensor t (the update pass relies on it)
        if FORMATS[state_kind].tensor_scale:
            self.tensor_scales = _reduction([(it.numel, 1) for it in items], list(range(len(items))),
                                            int(passes.WANT_STATE_ABSMAX), device, cfg)
        self._constexprs: dict[tuple[bool, bool, bool], tuple[dict, dict, dict]] = {}

    def constexprs(self, has_l2: bool, has_inv_scale: bool, has_found_inf: bool
                   ) -> tuple[dict, dict[int, dict], dict[int, dict]]:
        """The constexprs of this step's options (built once per combination): the update
        pass's, and the chunk and finalize passes' of each reduction stage by its ``WANT``."""
        key = (has_l2, has_inv_scale, has_found_inf)
        hit = self._constexprs.get(key)
        if hit is None:
            rule, cfg = self.rule, self.cfg
            flags = rule_flags(rule, self.p_dtype, self.g_dtype, self.state_kind, has_l2=has_l2,
                               has_inv_scale=has_inv_scale)
            chunks = {}
            for red in (self.stage_a, self.cautious, self.tensor_scales):
                if red is not None:
                    chunks[red.want] = reduce_constexprs(flags, red.want, self.sblk, red.units_per_prog,
                                                         red.rblock)
            finalize = {want: finalize_constexprs(flags, want, has_found_inf, cfg) for want in chunks}
            hit = (update_constexprs(rule, flags, self.state_kind, has_found_inf, cfg, self.stats), chunks,
                   finalize)
            self._constexprs[key] = hit
        return hit

    def tables(self, grad_ptrs: list[int], seeds: list[int], bias: list[tuple[float, float]] | None
               ) -> tuple[Tensor, Tensor]:
        """The tensor table and the tensor scalar table of this step (uploaded when new)."""
        def build_tab() -> Tensor:
            tab = list(self._tab)
            tab[int(L.C_GRAD)::int(L.N_COLS)] = grad_ptrs
            tab[int(L.C_SEED)::int(L.N_COLS)] = seeds
            return torch.tensor(tab, dtype=torch.int64)

        def build_ftab() -> Tensor:
            rows = []
            for i, numel32 in enumerate(self._numel32):
                b1, b2 = bias[i] if bias is not None else (1.0, 1.0)
                rows.extend([b1, b2, numel32, 0.0])
            return torch.tensor(rows, dtype=torch.float32)

        tab = self._tabs.table(self.device, (tuple(grad_ptrs), tuple(seeds)), build_tab)
        ftab = self._ftabs.table(self.device, (None if bias is None else tuple(bias),), build_ftab)
        return tab, ftab

    def run(self, grad_ptrs: list[int], values: StepValues, stats: Tensor | None) -> Tensor:
        """Launch this partition's passes with this step's gradients (addresses of contiguous
        tensors, in item order), keys and bias corrections (per prepared slot); with step
        statistics, add this partition's into ``stats`` (:data:`signopt.declaration.STEP_STATS`)."""
        device, cfg = self.device, self.cfg
        sc = values.scalars
        seeds = [0] * len(self.slots) if values.keys is None else [
            _signed64(triton_seed(values.key(i))) for i in self.slots]
        tab, ftab = self.tables(grad_ptrs, seeds, None if values.bias is None else [values.bias_of(i) for i in self.slots])
        for dst, work in self.writeback:
            work.copy_(dst)
        scal = _scalar_table(sc, self.state_kind, device)
        scal64 = _scalar_table64(sc, device)
        inv_scale = scal if sc.inv_scale is None else sc.inv_scale.to(device=device, dtype=torch.float32)
        found_inf = scal if sc.found_inf is None else sc.found_inf.to(device=device, dtype=torch.float32)
        has_found_inf = sc.found_inf is not None
        update, chunks, finalize = self.constexprs(sc.l2 != 0.0, sc.inv_scale is not None, has_found_inf)

        def reduce(red: Reduction, sega: Tensor) -> Tensor:
            """Chunk partials then per-segment finalize; returns the fp32 segment buffer."""
            width = partials_per_chunk(red.want)
            partial = torch.empty(red.n_units * width, dtype=torch.float64, device=device)
            out = torch.empty(max(red.n_segs, 1) * width, dtype=torch.float32, device=device)
            passes.reduce_chunks_kernel[(-(-red.n_units // red.units_per_prog),)](
                tab, ftab, red.units, red.rtab, scal, scal64, inv_scale, sega, partial, red.n_units,
                **chunks[red.want], num_warps=cfg.reduce_warps, enable_fp_fusion=False)
            passes.reduce_finalize_kernel[(-(-(red.n_segs * width) // cfg.finalize_segments),)](
                tab, ftab, red.seg_ids, red.rtab, scal, scal64, found_inf, partial, out, red.n_segs,
                **finalize[red.want], num_warps=cfg.reduce_warps, enable_fp_fusion=False)
            return out

        sega = scal if self.stage_a is None else reduce(self.stage_a, scal)
        segb = scal if self.cautious is None else reduce(self.cautious, sega)
        # last: its finalize replaces the tensor scales the other passes decode the state with
        tso = scal if self.tensor_scales is None else reduce(self.tensor_scales, scal)
        count = torch.zeros(1, dtype=torch.int64, device=device)
        partials = scal64
        if self.stats:
            partials = torch.zeros((self.total_blocks, int(L.N_TCOLS)), dtype=torch.float64, device=device)
        passes.update_kernel[(self.total_blocks,)](
            tab, ftab, self.blk, scal, scal64, inv_scale, found_inf, sega, segb, tso, count, partials,
            **update, num_warps=cfg.update_warps, enable_fp_fusion=False)
        for dst, work in self.writeback:
            dst.copy_(work)
        if self.stats:
            self._add_stats(stats, partials, count)
        return count

    def _add_stats(self, stats: Tensor, partials: Tensor, count: Tensor) -> None:
        """The update programs' partials (in program order) and the row/block/tensor envelope
        cells into ``stats``."""
        names = declaration.STEP_STATS
        stats[names.index("update_sq_sum")] += partials[:, int(L.T_SQ)].sum()
        stats[names.index("sign_flips")] += partials[:, int(L.T_FLIPS)].sum()
        stats[names.index("nonfinite")] += count.reshape(()).double()
        maxima = {"m": partials[:, int(L.T_M)], "v": partials[:, int(L.T_V)], "G": partials[:, int(L.T_G)]}
        if self.rule.family == "stochastic" and self.rule.envelope != "element":
            maxima["G"] = torch.cat([it.state["G"].double().abs() for it in self.items])
        for name, values in maxima.items():
            i = names.index(f"{name}_absmax")
            stats[i] = torch.stack([stats[i], values.amax()]).amax()


def _check_grad(g: Tensor | None, p: Tensor) -> None:
    if g is None:
        raise ValueError("a prepared Triton step needs a gradient for every slot")
    if real_dtype(g) not in PARAM_KINDS:
        raise ValueError(f"gradient of dtype {g.dtype} is not supported by the Triton backend "
                         "(float32, bfloat16, float16)")
    if g.device != p.device:
        raise ValueError(f"gradient on {g.device} but parameter on {p.device}")


class Plan:
    """The prepared step of a group's slots (:class:`signopt.backends.Prepared`): partitions,
    tensor tables, reduction tables, block ids, constexprs and grids are built once here; each
    :meth:`run` fills in only its gradients' addresses, Philox keys, bias corrections and
    scalars, then launches.

    The plan keeps the addresses of its slots' parameters and state tensors: a slot whose
    parameter or state is not contiguous is stepped through a contiguous work copy that every
    run refreshes before and writes back after its launches. Gradients of another dtype than
    the plan was built for (or a changed :data:`CONFIG`) rebuild it."""

    def __init__(self, rule: UpdateRule, slots: list) -> None:
        self.rule, self.slots = rule, list(slots)
        self.stats: Tensor | None = None  # step statistics of the last run (slots with signs)
        self.live = [i for i, s in enumerate(self.slots) if s.param.numel() > 0]
        for i in self.live:
            g = self.slots[i].grad
            if g is not None:
                _check_grad(g, self.slots[i].param)
        self._build([s.param.dtype if s.grad is None else s.grad.dtype for s in self.slots])

    def _build(self, grad_dtypes: list[torch.dtype]) -> None:
        rule, cfg = self.rule, CONFIG
        self.cfg, self.grad_dtypes = cfg, grad_dtypes
        self.devices = [s.param.device for s in self.slots]
        parts: dict[tuple, tuple[list[Item], list[tuple[Tensor, Tensor]]]] = {}
        for i in self.live:
            slot = self.slots[i]
            p = real_view(slot.param)
            key = (p.device, p.dtype, grad_dtypes[i].to_real(),
                   state_layout.stored_format(rule, slot.state))
            items, writeback = parts.setdefault(key, ([], []))
            state: dict[str, Tensor] = {}
            for s in state_layout.slots(rule):
                codes, scales = state_layout.stored(rule, slot.state, s)
                state[s.name] = _contiguous(codes, writeback)
                if scales is not None:
                    state[state_layout.scale_key(s.name)] = _contiguous(scales, writeback)
                tscale = slot.state.get(state_layout.tensor_scale_key(s.name))
                if tscale is not None:
                    state[state_layout.tensor_scale_key(s.name)] = _contiguous(tscale, writeback)
            items.append(Item(i, _contiguous(p, writeback), state, p.numel(), slot.index_offset,
                              state_layout.segment(rule, tuple(p.shape)), slot.sign))
        self.partitions = [Partition(rule, items, writeback, *key, cfg)
                           for key, (items, writeback) in parts.items()]

    def run(self, grads: list[Tensor], values: StepValues, contiguous: bool) -> Tensor | None:
        """Update every slot in place with this step's ``grads``; return the number of
        non-finite gradient elements (0-dim int64 on the parameters' device) or None when
        nothing was updated."""
        if self.rule.draws_random_bits and values.keys is None:
            raise ValueError("rule draws random bits but the step has no Philox keys")
        ptrs: dict[int, int] = {}
        work = []  # contiguous copies of this step's gradients, alive until after the launches
        rebuild = self.cfg is not CONFIG
        for i in self.live:
            g = grads[i]
            if g is None or g.dtype != self.grad_dtypes[i] or g.device != self.devices[i]:
                _check_grad(g, self.slots[i].param)
                rebuild = True
            if not contiguous and not g.is_contiguous():
                g = g.contiguous()
                work.append(g)
            ptrs[i] = g.data_ptr()
        if rebuild:
            self._build([grads[i].dtype if i in ptrs else s.param.dtype for i, s in enumerate(self.slots)])
        stats = None
        if self.slots and self.slots[0].sign is not None:
            stats = torch.zeros(len(declaration.STEP_STATS), dtype=torch.float64, device=self.devices[0])
        counts = [part.run([ptrs[i] for i in part.slots], values, stats)
                  for part in self.partitions]
        if stats is not None:
            found_inf = values.scalars.found_inf
            self.stats = stats if found_inf is None else reference.skipped_statistics(stats, found_inf)
        if not counts:
            return None
        total = counts[0]
        for c in counts[1:]:
            total = total + c.to(total.device)
        return total.reshape(())


def prepare(rule: UpdateRule, slots: list) -> Plan:
    """The prepared step of ``slots`` (state allocated)."""
    return Plan(rule, slots)

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
cautious counts), plus one ``zeros`` for the non-finite counter.

No host synchronisation: the tables depend only on addresses, shapes and per-step host values
(Philox keys, AdamW bias corrections), so they are cached on the device by content (an LRU of
uploaded tables) and uploaded with a non-blocking copy from pinned memory when new. A tensor
``lr``/``decay`` is copied into the scalar table on the device (``torch.cat``), so a step with a
tensor lr and fixed addresses launches only kernels: it is capturable in a CUDA graph (rules
that draw random bits change their keys every step and so upload a new table each step).

Launch configuration: fixed per pass (:data:`CONFIG`), never autotuned — an autotuner re-runs
the kernel to time it, which would apply an in-place update several times. The values are the
usual memory-bound choices (1024 elements, 4 warps per program); they have not been tuned on a
GPU (none was available while writing this); ``bench/triton_gpu.py`` measures them.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from signopt import state_format
from signopt.philox import triton_seed
from signopt.rule import UpdateRule
from signopt.scalars import GroupScalars, f32

from . import layout as L
from . import passes, rules
from .numerics import KIND_BF16, KIND_E4M3, KIND_E5M2, KIND_FP16, KIND_FP32

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

PARAM_KINDS = {torch.float32: int(KIND_FP32), torch.bfloat16: int(KIND_BF16), torch.float16: int(KIND_FP16)}
STATE_KINDS = {"fp32": int(KIND_FP32), "bf16": int(KIND_BF16), "fp8_e4m3": int(KIND_E4M3),
               "fp8_e5m2": int(KIND_E5M2)}
FAMILIES = {"sign": int(rules.FAMILY_SIGN), "signum": int(rules.FAMILY_SIGNUM),
            "lion": int(rules.FAMILY_LION), "stochastic": int(rules.FAMILY_STOCHASTIC)}
KAPPAS = {"l1": int(rules.KAPPA_L1), "l2sq": int(rules.KAPPA_L2SQ), "huber": int(rules.KAPPA_HUBER),
          "l2": int(rules.KAPPA_L2), "row_l2": int(rules.KAPPA_ROW_L2), "lp": int(rules.KAPPA_LP)}
BASES = {"sgd": int(rules.BASE_SGD), "momentum": int(rules.BASE_MOMENTUM),
         "adamw": int(rules.BASE_ADAMW), "lion": int(rules.BASE_LION)}
ENVELOPES = {"element": int(rules.ENVELOPE_ELEMENT), "row": int(rules.ENVELOPE_ROW),
             "block": int(rules.ENVELOPE_BLOCK), "tensor": int(rules.ENVELOPE_TENSOR)}


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unsupported(rule: UpdateRule, params: list[Tensor]) -> str | None:
    """Why these kernels cannot run ``rule`` on ``params`` (None if they can)."""
    if rule.kappa_fn is not None or rule.kappa == "callable":
        return "a callable kappa runs only on the torch backend"
    if rule.state_dtype in state_format.FP8 and not 1 <= rule.state_block <= MAX_FP8_BLOCK:
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
    return torch.view_as_real(t).dtype if t.is_complex() else t.dtype


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

    def _lookup(self, key: tuple, build) -> Tensor:
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        host = build()
        device = key[0]
        dev = host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host
        self._entries[key] = dev
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return dev

    def values(self, values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A 1-D ``dtype`` tensor holding ``values`` on ``device``."""
        return self._lookup((device, dtype, "values", values), lambda: torch.tensor(values, dtype=dtype))

    def ids(self, counts: tuple[int, ...], device: torch.device) -> Tensor:
        """int32 ``[0]*counts[0] + [1]*counts[1] + ...`` on ``device``."""
        return self._lookup((device, torch.int32, "ids", counts), lambda: torch.repeat_interleave(
            torch.arange(len(counts), dtype=torch.int32), torch.tensor(counts, dtype=torch.int64)))


_CACHE = DeviceTableCache()


def _uploaded(values: list, dtype: torch.dtype, device: torch.device) -> Tensor:
    return _CACHE.values(tuple(values), dtype, device)


def _repeat_ids(counts: list[int], device: torch.device) -> Tensor:
    return _CACHE.ids(tuple(counts), device)


# ----------------------------------------------------------------------------- work items
@dataclass
class Item:
    """One tensor of a partition, as the kernels see it (contiguous real views)."""

    param: Tensor
    grad: Tensor
    state: dict[str, Tensor]
    numel: int
    rows: int
    index_offset: int
    seed: int
    bias: tuple[float, float]
    writeback: list[tuple[Tensor, Tensor]]


def _contiguous(t: Tensor, writeback: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``t`` itself when contiguous, else a contiguous copy that is written back after."""
    if t.is_contiguous():
        return t
    work = t.contiguous()
    writeback.append((t, work))
    return work


def _state_kind(rule: UpdateRule, state: dict) -> str:
    for name in rule.state_names():
        if name == "G" and rule.envelope != "element":
            continue
        return state_format.format_of(state[name])
    return "fp32"


def _check_slot(rule: UpdateRule, slot) -> None:
    p, g = slot.param, slot.grad
    if real_dtype(g) not in PARAM_KINDS:
        raise ValueError(f"gradient of dtype {g.dtype} is not supported by the Triton backend "
                         "(float32, bfloat16, float16)")
    if g.device != p.device:
        raise ValueError(f"gradient on {g.device} but parameter on {p.device}")
    if rule.draws_random_bits and slot.key is None:
        raise ValueError("rule draws random bits but the slot has no Philox key")


def _signed64(x: int) -> int:
    return x - (1 << 64) if x >= (1 << 63) else x


def _items(rule: UpdateRule, slots: list) -> dict[tuple, list[Item]]:
    parts: dict[tuple, list[Item]] = {}
    for slot in slots:
        _check_slot(rule, slot)
    for slot in slots:
        p = real_view(slot.param)
        if p.numel() == 0:
            continue
        writeback: list[tuple[Tensor, Tensor]] = []
        pw = _contiguous(p, writeback)
        g = real_view(slot.grad).contiguous()
        state = {}
        for name, t in slot.state.items():
            if isinstance(t, Tensor) and name != "step":
                state[name] = _contiguous(t, writeback)
        rows = p.shape[0] if p.dim() >= 2 else 1
        seed = _signed64(triton_seed(slot.key)) if slot.key is not None else 0
        bias = slot.bias if slot.bias is not None else (1.0, 1.0)
        key = (p.device, p.dtype, g.dtype, _state_kind(rule, slot.state))
        parts.setdefault(key, []).append(Item(pw, g, state, p.numel(), rows, slot.index_offset,
                                              seed, bias, writeback))
    return parts


# ----------------------------------------------------------------------------- the step
def _stage_a_segments(rule: UpdateRule, it: Item) -> tuple[int, int] | None:
    """``(segment length, segments)`` of the first reduction stage, or None."""
    if rule.family == "lion" and rule.kappa in ("l2", "lp"):
        return it.numel, 1
    if rule.family == "lion" and rule.kappa == "row_l2":
        return it.numel // it.rows, it.rows
    if rule.family == "stochastic" and rule.envelope != "element":
        if rule.envelope == "row":
            return it.numel // it.rows, it.rows
        if rule.envelope == "block":
            return rule.envelope_block, -(-it.numel // rule.envelope_block)
        return it.numel, 1
    return None


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _scalar_table(rule: UpdateRule, sc: GroupScalars, state_kind: str, device: torch.device) -> Tensor:
    inv_qmax = 0.0
    if state_kind in state_format.FP8:
        inv_qmax = f32(1.0 / state_format.FP8[state_kind].max_finite)
    tail = [sc.l2, sc.beta1, sc.omb1, sc.beta2, sc.omb2, sc.eps, sc.huber_delta,
            f32(sc.p - 1.0), sc.envelope_decay, inv_qmax]
    if isinstance(sc.lr, Tensor) or isinstance(sc.decay, Tensor):
        def one(x):
            if isinstance(x, Tensor):
                return x.reshape(1).to(device=device, dtype=torch.float32)
            return torch.full((1,), x, dtype=torch.float32, device=device)
        return torch.cat([one(sc.lr), one(sc.decay), _uploaded(tail, torch.float32, device)])
    return _uploaded([sc.lr, sc.decay] + tail, torch.float32, device)


def _addr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def step(rule: UpdateRule, slots: list, sc: GroupScalars) -> Tensor | None:
    """Update every slot in place; return the number of non-finite gradient elements
    (0-dim int64 on the parameters' device) or None when nothing was updated."""
    counts = []
    for (device, p_dtype, g_dtype, state_kind), items in _items(rule, slots).items():
        counts.append(_step_partition(rule, items, sc, device, p_dtype, g_dtype, state_kind))
        for it in items:
            for dst, work in it.writeback:
                dst.copy_(work)
    if not counts:
        return None
    total = counts[0]
    for c in counts[1:]:
        total = total + c.to(total.device)
    return total.reshape(())


def update_tile(rule: UpdateRule, state_kind: str, cfg: LaunchConfig) -> tuple[int, int, int]:
    """``(ROWS, COLS, SB)`` of the update tile: one FP8 block per row for FP8 state
    (``COLS`` = its next power of two), else one row of ``update_block`` elements."""
    if state_kind in state_format.FP8:
        cols = _pow2_at_least(rule.state_block)
        return max(1, cfg.update_block // cols), cols, rule.state_block
    return 1, cfg.update_block, cfg.update_block


def rule_flags(rule: UpdateRule, p_dtype: torch.dtype, g_dtype: torch.dtype, state_kind: str, *,
               has_l2: bool, has_inv_scale: bool) -> dict:
    """The constexprs shared by every pass: which rule, which storage kinds."""
    s_kind = STATE_KINDS[state_kind]
    p_kind = PARAM_KINDS[p_dtype]
    return dict(
        FAMILY=FAMILIES[rule.family], KAPPA=KAPPAS.get(rule.kappa, 0), BASE=BASES[rule.base],
        ENVELOPE=ENVELOPES[rule.envelope], ENV_FROM_GRAD=rule.envelope_source == "grad",
        MAXIMIZE=rule.maximize, HAS_L2=has_l2, HAS_INV_SCALE=has_inv_scale,
        P_KIND=p_kind, G_KIND=PARAM_KINDS[g_dtype], S_KIND=s_kind,
        NEED_WORDS=rule.stochastic or _param_sr(rule, p_kind) or _state_sr(rule, s_kind),
    )


def _param_sr(rule: UpdateRule, p_kind: int) -> bool:
    return rule.param_rounding == "stochastic" and p_kind != int(KIND_FP32)


def _state_sr(rule: UpdateRule, s_kind: int) -> bool:
    return rule.state_rounding == "stochastic" and s_kind != int(KIND_FP32)


def update_constexprs(rule: UpdateRule, flags: dict, state_kind: str, has_found_inf: bool,
                      cfg: LaunchConfig) -> dict:
    """All constexprs of ``update_kernel``."""
    rows, cols, sb = update_tile(rule, state_kind, cfg)
    return dict(flags, CAUTIOUS=rule.cautious, HAS_FOUND_INF=has_found_inf,
                STATE_SR=_state_sr(rule, flags["S_KIND"]), PARAM_SR=_param_sr(rule, flags["P_KIND"]),
                ROWS=rows, COLS=cols, SB=sb)


def reduce_tile(longest_segment: int, cfg: LaunchConfig) -> tuple[int, int]:
    """``(UNITS, RBLOCK)`` of a chunk program: chunks of ``RBLOCK`` (the longest segment's
    next power of two, at most ``reduce_block``), ``UNITS`` of them per program."""
    rblock = min(cfg.reduce_block, max(16, _pow2_at_least(longest_segment)))
    return max(1, cfg.reduce_block // rblock), rblock


def reduce_constexprs(flags: dict, want: int, sblk: int, units: int, rblock: int) -> dict:
    """All constexprs of ``reduce_chunks_kernel``."""
    return dict(flags, WANT=want, SBLK=sblk, UNITS=units, RBLOCK=rblock)


def finalize_constexprs(flags: dict, want: int, has_found_inf: bool, cfg: LaunchConfig) -> dict:
    """All constexprs of ``reduce_finalize_kernel``."""
    return dict(FAMILY=flags["FAMILY"], KAPPA=flags["KAPPA"], HAS_FOUND_INF=has_found_inf,
                WANT=want, FSEGS=cfg.finalize_segments)


def _step_partition(rule: UpdateRule, items: list[Item], sc: GroupScalars, device: torch.device,
                    p_dtype: torch.dtype, g_dtype: torch.dtype, state_kind: str) -> Tensor:
    cfg = CONFIG
    fp8 = state_kind in state_format.FP8
    rows_per_prog, cols, sb = update_tile(rule, state_kind, cfg)
    per_prog = rows_per_prog * sb
    n_blocks = [-(-it.numel // per_prog) for it in items]

    # stage A (norms / envelopes) segment layout
    stage_a = [_stage_a_segments(rule, it) for it in items]
    has_a = stage_a[0] is not None
    seg_base, sb_acc = [], 0
    for sa in stage_a:
        seg_base.append(sb_acc)
        sb_acc += sa[1] if sa else 0

    first_block, acc = [], 0
    for nb in n_blocks:
        first_block.append(acc)
        acc += nb
    total_blocks = acc

    def st(it: Item, name: str) -> Tensor | None:
        return it.state.get(name)

    env_el = rule.stochastic and rule.envelope == "element"
    tab_rows = []
    for i, it in enumerate(items):
        seg_len = stage_a[i][0] if stage_a[i] else 1
        row = [0] * int(L.N_COLS)
        row[int(L.C_PARAM)] = it.param.data_ptr()
        row[int(L.C_GRAD)] = it.grad.data_ptr()
        row[int(L.C_M)] = _addr(st(it, "m"))
        row[int(L.C_V)] = _addr(st(it, "v"))
        row[int(L.C_ENV)] = _addr(st(it, "G"))
        row[int(L.C_M_SCALE)] = _addr(st(it, "m" + state_format.SCALE_SUFFIX))
        row[int(L.C_V_SCALE)] = _addr(st(it, "v" + state_format.SCALE_SUFFIX))
        row[int(L.C_ENV_SCALE)] = _addr(st(it, "G" + state_format.SCALE_SUFFIX)) if env_el else 0
        row[int(L.C_NUMEL)] = it.numel
        row[int(L.C_INDEX_OFFSET)] = it.index_offset
        row[int(L.C_SEED)] = it.seed
        row[int(L.C_FIRST_BLOCK)] = first_block[i]
        row[int(L.C_SEG_BASE)] = seg_base[i]
        row[int(L.C_SEG_LEN)] = max(seg_len, 1)
        tab_rows.extend(row)
    tab = _uploaded(tab_rows, torch.int64, device)
    ftab_rows = []
    for it in items:
        ftab_rows.extend([it.bias[0], it.bias[1], f32(float(it.numel)), 0.0])
    ftab = _uploaded(ftab_rows, torch.float32, device)
    scal = _scalar_table(rule, sc, state_kind, device)
    scal64 = _uploaded([sc.p, (sc.p - 1.0) / sc.p], torch.float64, device)
    inv_scale = scal if sc.inv_scale is None else sc.inv_scale.to(device=device, dtype=torch.float32)
    found_inf = scal if sc.found_inf is None else sc.found_inf.to(device=device, dtype=torch.float32)

    flags = rule_flags(rule, p_dtype, g_dtype, state_kind, has_l2=sc.l2 != 0.0,
                       has_inv_scale=sc.inv_scale is not None)
    sblk = rule.state_block if fp8 else 1

    sega = scal
    if has_a:
        sega = _reduce_stage(items, stage_a, seg_base, int(passes.WANT_STAGE_A), rule, flags, tab,
                             ftab, scal, scal64, inv_scale, found_inf, scal, sblk, device,
                             sc.found_inf is not None)
    segb = scal
    if rule.cautious:
        whole = [(it.numel, 1) for it in items]
        base_b = list(range(len(items)))
        segb = _reduce_stage(items, whole, base_b, int(passes.WANT_CAUTIOUS_COUNT), rule, flags,
                             tab, ftab, scal, scal64, inv_scale, found_inf, sega, sblk, device,
                             sc.found_inf is not None)

    count = torch.zeros(1, dtype=torch.int64, device=device)
    blk = _repeat_ids(n_blocks, device)
    passes.update_kernel[(total_blocks,)](
        tab, ftab, blk, scal, scal64, inv_scale, found_inf, sega, segb, count,
        **update_constexprs(rule, flags, state_kind, sc.found_inf is not None, cfg),
        num_warps=cfg.update_warps, enable_fp_fusion=False)
    return count


def _reduce_stage(items, segments, seg_base, want, rule, flags, tab, ftab, scal, scal64,
                  inv_scale, found_inf, sega, sblk, device, has_found_inf) -> Tensor:
    """Chunk partials then per-segment finalize; returns the fp32 segment buffer."""
    cfg = CONFIG
    longest = max(s[0] for s in segments)
    units_per_prog, rblock = reduce_tile(longest, cfg)
    unit_counts, rrows, base = [], [], 0
    for (seg_len, n_seg), sbase in zip(segments, seg_base):
        chunks = max(1, -(-seg_len // rblock))
        rrows.extend([base, chunks, max(seg_len, 1), sbase])
        unit_counts.append(chunks * n_seg)
        base += chunks * n_seg
    n_units = base
    n_segs = sum(s[1] for s in segments)
    rtab = _uploaded(rrows, torch.int64, device)
    units = _repeat_ids(unit_counts, device)
    seg_ids = _repeat_ids([s[1] for s in segments], device)
    partial = torch.empty(n_units, dtype=torch.float64, device=device)
    out = torch.empty(max(n_segs, 1), dtype=torch.float32, device=device)
    passes.reduce_chunks_kernel[(-(-n_units // units_per_prog),)](
        tab, ftab, units, rtab, scal, scal64, inv_scale, sega, partial, n_units,
        **reduce_constexprs(flags, want, sblk, units_per_prog, rblock), num_warps=cfg.reduce_warps,
        enable_fp_fusion=False)
    passes.reduce_finalize_kernel[(-(-n_segs // cfg.finalize_segments),)](
        tab, ftab, seg_ids, rtab, scal, scal64, found_inf, partial, out, n_segs,
        **finalize_constexprs(flags, want, has_found_inf, cfg), num_warps=cfg.reduce_warps,
        enable_fp_fusion=False)
    return out

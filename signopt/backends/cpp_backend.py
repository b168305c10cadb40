"""The fused C++/CUDA backend: ``torch.ops.signopt.step`` (``csrc/``), one call per param
group and (device, parameter dtype, state format) combination over all its tensors.
:meth:`CppBackend.prepare` builds those calls' tensor lists once; ``SignOptimizer`` keeps them
between steps and passes only the gradients, keys and scalars of each step.

``load()`` builds the extension just in time (cached; see :mod:`signopt.build`), so a group
resolved to ``"cpp"`` never compiles inside ``step``.
"""
from __future__ import annotations

import logging
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from .. import build, state_format
from ..rule import UpdateRule
from ..scalars import GroupScalars
from . import BackendUnavailable
from .slot import HELD_GRADS, HeldGrads, ParamSlot
from .torch_backend import real_view

log = logging.getLogger("signopt")

# Rule kinds and storage formats: the enums of csrc/rules.h and csrc/cpu_kernels.h.
LION_KINDS = {"l1": 2, "l2sq": 3, "huber": 4, "l2": 5, "row_l2": 5, "lp": 6}
STOCHASTIC_KINDS = {"sgd": 7, "momentum": 8, "lion": 9, "adamw": 10}
PARAM_FMT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
STATE_FMT = {"fp32": 0, "bf16": 1, "fp8_e4m3": 3, "fp8_e5m2": 4}
SUPPORTED_DEVICES = ("cpu", "cuda")
MAX_CUDA_FP8_BLOCK = 2048  # csrc/cuda_launch.h: FP8 blocks are staged in shared memory


def kind_of(rule: UpdateRule) -> int:
    """The kernel kind of ``rule`` (``ValueError`` for a rule without a fused kernel)."""
    if rule.family == "sign":
        return 0
    if rule.family == "signum":
        return 1
    if rule.family == "lion":
        if rule.kappa not in LION_KINDS:
            raise ValueError(f"kappa {rule.kappa!r} has no fused kernel")
        return LION_KINDS[rule.kappa]
    return STOCHASTIC_KINDS[rule.base]


def _real_dtype(t: Tensor) -> torch.dtype:
    return real_view(t).dtype if t.is_complex() else t.dtype


def _rows(shape: torch.Size) -> int:
    """Rows of ``kappa.rows_view`` for a tensor of ``shape``."""
    return shape[0] if len(shape) >= 2 else 1


def _seglen(rule: UpdateRule, p: Tensor) -> int:
    """Length of the reduction segment of ``p`` (its real view), 0 when the rule has none."""
    n = p.numel()
    if rule.family == "lion":
        if rule.kappa == "row_l2":
            return n // _rows(p.shape)
        return n if rule.kappa in ("l2", "lp") else 0
    if rule.family != "stochastic" or rule.envelope == "element":
        return 0
    if rule.envelope == "row":
        return n // _rows(p.shape)
    return rule.envelope_block if rule.envelope == "block" else n


class CppBackend:
    """Fused kernels for every built-in rule on CPU (and CUDA when built with it)."""

    name = "cpp"

    def __init__(self, has_cuda: bool) -> None:
        self.has_cuda = has_cuda

    def unsupported(self, rule: UpdateRule, params: list[Tensor]) -> str | None:
        if rule.kappa_fn is not None:
            return "a callable kappa runs on the torch backend only"
        try:
            kind_of(rule)
        except ValueError as exc:
            return str(exc)
        if rule.state_dtype not in STATE_FMT:
            return f"state_dtype {rule.state_dtype!r} has no fused kernel"
        for i, p in enumerate(params):
            if p.device.type not in SUPPORTED_DEVICES:
                return f"params[{i}] is on {p.device}; the cpp backend runs on CPU and CUDA"
            if p.device.type == "cuda" and not self.has_cuda:
                return "the signopt extension was built without CUDA kernels"
            if (p.device.type == "cuda" and rule.state_dtype.startswith("fp8")
                    and rule.state_block > MAX_CUDA_FP8_BLOCK):
                return f"FP8 state on CUDA needs state_block <= {MAX_CUDA_FP8_BLOCK}"
            if _real_dtype(p) not in PARAM_FMT:
                return (f"params[{i}] has dtype {p.dtype}; the cpp backend supports float32, bfloat16, "
                        "float16 (and complex64/complex32 through their real views)")
            if not p.is_contiguous():
                return f"params[{i}] is not contiguous"
            if p.grad is not None and p.grad.dtype != p.dtype:
                return f"params[{i}] has dtype {p.dtype} but its gradient has dtype {p.grad.dtype}"
        return None

    def step(self, rule: UpdateRule, slots: list[ParamSlot], scalars: GroupScalars) -> Tensor | None:
        keys = None if all(s.key is None for s in slots) else [s.key or (0, 0) for s in slots]
        bias = None if all(s.bias is None for s in slots) else [s.bias or (1.0, 1.0) for s in slots]
        return self.prepare(rule, slots)([s.grad for s in slots], keys, bias, scalars, False)

    def prepare(self, rule: UpdateRule, slots: list[ParamSlot]) -> "PreparedGroup":
        """The group's calls with everything that stays the same from step to step (params,
        state tensors, offsets, segment lengths, config), for ``SignOptimizer`` to reuse."""
        return PreparedGroup(rule, slots)


class PreparedGroup:
    """One ``torch.ops.signopt.step`` call per (device, parameter dtype, state format) of a
    group's slots, in the order the slots first show each combination; zero-size tensors are
    left out. Calling it runs one step: ``grads``, ``keys`` and ``bias`` are per slot (``keys``
    and ``bias`` ``None`` when the rule has none); ``contiguous`` promises that every gradient
    is contiguous (otherwise non-contiguous ones are copied)."""

    def __init__(self, rule: UpdateRule, slots: list[ParamSlot]) -> None:
        kind = kind_of(rule)
        elem = [n for n in rule.state_names() if not (n == "G" and rule.envelope != "element")]
        parts: dict[tuple, list[int]] = {}
        for i, slot in enumerate(slots):
            p = real_view(slot.param)
            if p.numel() == 0:
                continue
            sfmt = STATE_FMT[state_format.format_of(slot.state[elem[0]])] if elem else 0
            parts.setdefault((p.device, PARAM_FMT[p.dtype], sfmt), []).append(i)
        whole = len(parts) == 1 and len(next(iter(parts.values()))) == len(slots)
        self.calls = [_Call(rule, kind, key, [slots[i] for i in pos], None if whole else pos)
                      for key, pos in parts.items()]
        self.held = None

    def hold(self, slots: list[ParamSlot]) -> Any:
        """Build the calls' ``GroupStep`` over the ``slots`` they were prepared from, for a plan
        that is kept (see :func:`_held_step`): the held object, or None where the Python path
        must run."""
        self.held = _held_step(self.calls, slots)
        return self.held

    def __call__(self, grads: list[Tensor] | HeldGrads, keys: list[tuple[int, int]] | None,
                 bias: list[tuple[float, float]] | None, sc: GroupScalars,
                 contiguous: bool) -> Tensor | None:
        if grads is HELD_GRADS:  # held.check() passed (and held.advance() made keys and bias)
            return self.held.run(*_scalar_args(sc, self.calls[0].device))
        counts = [call(grads, keys, bias, sc, contiguous) for call in self.calls]
        if not counts:
            return None
        return counts[0] if len(counts) == 1 else torch.stack(counts).sum()


def _pick(items: list, pos: list[int] | None) -> list:
    return items if pos is None else [items[i] for i in pos]


def _held_step(calls: list[_Call], slots: list[ParamSlot]) -> Any:
    """A ``torch.classes.signopt.GroupStep`` holding ``calls`` (see csrc/group_step.cpp), or
    None where the calls need per-step Python (complex real views) or span several devices."""
    if not calls or any(c.complex for c in calls) or len({c.device for c in calls}) != 1:
        return None
    held = torch.classes.signopt.GroupStep([s.param for s in slots])
    for c in calls:
        held.add_call(list(range(len(slots))) if c.pos is None else c.pos, *c.state, c.config,
                      c.offsets, c.seglens)
    if "step" in slots[0].state:
        held.set_counters([s.state["step"] for s in slots], [s.index for s in slots])
    return held


def _scalar_args(sc: GroupScalars, device: torch.device) -> tuple:
    """signopt::step's ``hyper, lr, decay, inv_scale, found_inf`` for a call on ``device``."""
    lr_t = sc.lr.to(device=device, dtype=torch.float32) if isinstance(sc.lr, Tensor) else None
    decay_t = sc.decay.to(device=device, dtype=torch.float32) if isinstance(sc.decay, Tensor) else None
    hyper = [0.0 if lr_t is not None else float(sc.lr), 0.0 if decay_t is not None else float(sc.decay),
             sc.l2, sc.beta1, sc.omb1, sc.beta2, sc.omb2, sc.eps, sc.huber_delta, sc.p - 1.0,
             sc.envelope_decay, sc.p, (sc.p - 1.0) / sc.p]
    inv_scale = None if sc.inv_scale is None else sc.inv_scale.to(device=device, dtype=torch.float32)
    found_inf = None if sc.found_inf is None else sc.found_inf.to(device=device, dtype=torch.float32)
    return hyper, lr_t, decay_t, inv_scale, found_inf


class _Call:
    """One kernel call of a :class:`PreparedGroup`: slots ``pos`` of the group (``None``: all)."""

    def __init__(self, rule: UpdateRule, kind: int, key: tuple, slots: list[ParamSlot],
                 pos: list[int] | None) -> None:
        self.device, pfmt, sfmt = key
        self.pos = pos
        blocked = sfmt >= 3
        stochastic = rule.family == "stochastic"
        has_m = "m" in rule.state_names()
        has_v = "v" in rule.state_names()
        elem_env = stochastic and rule.envelope == "element"
        self.complex = any(s.param.is_complex() for s in slots)  # real views taken per step
        self.params = [s.param for s in slots]
        m, v, env, m_s, v_s, env_s = [], [], [], [], [], []
        for slot in slots:
            st = slot.state
            if has_m:
                m.append(st["m"])
                if blocked:
                    m_s.append(st["m" + state_format.SCALE_SUFFIX])
            if has_v:
                v.append(st["v"])
                if blocked:
                    v_s.append(st["v" + state_format.SCALE_SUFFIX])
            if stochastic:
                env.append(st["G"])
                if elem_env and blocked:
                    env_s.append(st["G" + state_format.SCALE_SUFFIX])
        self.state = (m, v, env, m_s, v_s, env_s)
        self.offsets = [int(s.index_offset) for s in slots]
        self.seglens = [_seglen(rule, real_view(s.param)) for s in slots]
        self.no_keys = [0, 0] * len(slots)
        self.no_bias = [1.0, 1.0] * len(slots)
        self.config = [kind, pfmt, sfmt, rule.state_block, int(rule.maximize), int(rule.cautious),
                       int(rule.envelope_source == "grad"), 0 if rule.envelope == "element" else 1,
                       int(rule.state_rounding == "stochastic"), int(rule.param_rounding == "stochastic")]

    def __call__(self, grads: list[Tensor], keys: list[tuple[int, int]] | None,
                 bias: list[tuple[float, float]] | None, sc: GroupScalars,
                 contiguous: bool) -> Tensor:
        device = self.device
        params = self.params
        grads = _pick(grads, self.pos)
        if self.complex:
            params = [real_view(p) for p in params]
            grads = [real_view(g) for g in grads]
        if not contiguous:
            grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
        flat_keys = self.no_keys if keys is None else list(chain.from_iterable(_pick(keys, self.pos)))
        flat_bias = self.no_bias if bias is None else list(chain.from_iterable(_pick(bias, self.pos)))
        hyper, lr_t, decay_t, inv_scale, found_inf = _scalar_args(sc, device)
        return torch.ops.signopt.step(params, grads, *self.state, self.config, hyper, flat_keys,
                                      self.offsets, self.seglens, flat_bias, lr_t, decay_t,
                                      inv_scale, found_inf)


def load() -> CppBackend:
    """Build (once, cached) and load the extension; ``BackendUnavailable`` with the reason."""
    try:
        build.load()
    except build.BuildUnavailable as exc:
        log.warning("signopt: the cpp backend is unavailable (%s); backend='auto' uses the torch "
                    "backend", exc)
        raise BackendUnavailable(str(exc)) from exc
    return CppBackend(has_cuda=build.with_cuda())

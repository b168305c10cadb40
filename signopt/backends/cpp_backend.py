"""The fused C++/CUDA backend: ``torch.ops.signopt.step`` (``csrc/``), one call per param
group and (device, parameter format, state format) combination over all its tensors.
:meth:`CppBackend.prepare` builds those calls' tensor lists and fixed arguments once;
``SignOptimizer`` keeps them between steps and passes only each step's gradients and
:class:`~signopt.scalars.StepValues`.

The op's arguments, kinds, formats and flags are those of :mod:`signopt.declaration` (the C++
side includes the header generated from it); state is walked through :mod:`signopt.state_layout`.

``load()`` builds the extension just in time (cached; see :mod:`signopt.build`), so a group
resolved to ``"cpp"`` never compiles inside ``step``.
"""
from __future__ import annotations

import logging
import operator
from typing import Callable

import torch
from torch import Tensor

from .. import build, declaration, state_layout
from ..declaration import FORMATS, PARAM_FORMATS, SCALARS, STEP_LISTS, Format
from ..rule import UpdateRule
from ..philox import KEY_DOMAIN, MASK32
from ..scalars import GroupScalars, StepValues, bias_betas
from . import BackendUnavailable
from .slot import ParamSlot
from .torch_backend import real_view

log = logging.getLogger("signopt")

SUPPORTED_DEVICES = ("cpu", "cuda")
MAX_CUDA_FP8_BLOCK = 2048  # csrc/cuda_launch.h: FP8/FP4 blocks are staged in shared memory

# signopt::step's state lists (after params and grads), in the schema's order.
_LIST_NAMES = tuple(n for t, n, kw in declaration.step_arguments() if t.endswith("[]") and t.startswith("Tensor")
                    and n not in ("params", "grads"))

_HELD_RUN_TENSORS = declaration.held_run_tensors()
_SCALARS_OF = operator.attrgetter(*(s.name for s in SCALARS))  # a GroupScalars' values, in order
_TENSOR_SCALARS_OF = operator.attrgetter(*declaration.TENSOR_SCALARS)

# The value of each of declaration.FLAGS for a rule.
_FLAGS: dict[str, Callable[[UpdateRule], bool]] = {
    "maximize": lambda r: r.maximize,
    "cautious": lambda r: r.cautious,
    "envelope_from_grad": lambda r: r.envelope_source == "grad",
    "state_stochastic_rounding": lambda r: r.state_rounding == "stochastic",
    "param_stochastic_rounding": lambda r: r.param_rounding == "stochastic",
}


def flags(rule: UpdateRule) -> dict[str, bool]:
    """``signopt::step``'s flags of ``rule``, by name."""
    return {f: bool(_FLAGS[f](rule)) for f in declaration.FLAGS}


def _real_dtype(t: Tensor) -> torch.dtype:
    return real_view(t).dtype if t.is_complex() else t.dtype


class CppBackend:
    """Fused kernels for every built-in rule on CPU (and CUDA when built with it)."""

    name = "cpp"

    def __init__(self, has_cuda: bool) -> None:
        self.has_cuda = has_cuda

    def unsupported(self, rule: UpdateRule, params: list[Tensor]) -> str | None:
        if rule.kappa_fn is not None:
            return "a callable kappa runs on the torch backend only"
        try:
            declaration.kind(rule.family, rule.kappa, rule.base)
        except ValueError as exc:
            return str(exc)
        fmt = FORMATS.get(rule.state_dtype)
        if fmt is None or not fmt.state or fmt.codec is None:
            return f"{declaration.options_of(rule.state_dtype)} has no C++ kernel; the torch backend runs it"
        for i, p in enumerate(params):
            if p.device.type not in SUPPORTED_DEVICES:
                return f"params[{i}] is on {p.device}; the cpp backend runs on CPU and CUDA"
            if p.device.type == "cuda" and not self.has_cuda:
                return "the signopt extension was built without CUDA kernels"
            if p.device.type == "cuda" and fmt.block_scaled and rule.state_block > MAX_CUDA_FP8_BLOCK:
                return f"block-scaled (FP8/FP4) state on CUDA needs state_block <= {MAX_CUDA_FP8_BLOCK}"
            if _real_dtype(p) not in PARAM_FORMATS:
                return (f"params[{i}] has dtype {p.dtype}; the cpp backend supports "
                        f"{', '.join(str(d).removeprefix('torch.') for d in PARAM_FORMATS)} "
                        "(and complex64/complex32 through their real views)")
            if not p.is_contiguous():
                return f"params[{i}] is not contiguous"
            if p.grad is not None and p.grad.dtype != p.dtype:
                return f"params[{i}] has dtype {p.dtype} but its gradient has dtype {p.grad.dtype}"
        return None

    def stats_unsupported(self, params: list[Tensor]) -> str | None:
        """Why this backend cannot compute step statistics for ``params``, or None (the CPU and
        the CUDA kernels compute them; a group's calls add into one buffer on one device)."""
        devices = {p.device for p in params}
        if len(devices) > 1:
            return (f"the group's parameters lie on {len(devices)} devices ({', '.join(sorted(map(str, devices)))}); "
                    "its statistics are added up in one buffer on one device")
        return None

    def prepare(self, rule: UpdateRule, slots: list[ParamSlot]) -> PreparedGroup:
        """The group's calls with everything that stays the same from step to step (params,
        state tensors, offsets, segment lengths, kind, formats, flags), for ``SignOptimizer`` to
        reuse."""
        return PreparedGroup(rule, slots)


class PreparedGroup:
    """One ``torch.ops.signopt.step`` call per (device, parameter format, state format) of a
    group's slots, in the order the slots first show each combination; zero-size tensors are
    left out. :meth:`run` runs one step; :meth:`hold` makes the :class:`HeldGroup` that reads
    the gradients in C++. With step statistics (slots with ``sign`` tensors) every call
    accumulates into the one ``stats`` buffer, which each step zeroes first."""

    def __init__(self, rule: UpdateRule, slots: list[ParamSlot]) -> None:
        kind = declaration.kind(rule.family, rule.kappa, rule.base)
        self.rule = rule
        parts: dict[tuple, list[int]] = {}
        for i, slot in enumerate(slots):
            p = real_view(slot.param)
            if p.numel() == 0:
                continue
            state_fmt = FORMATS[state_layout.stored_format(rule, slot.state)]
            parts.setdefault((p.device, PARAM_FORMATS[p.dtype], state_fmt), []).append(i)
        whole = len(parts) == 1 and len(next(iter(parts.values()))) == len(slots)
        self.slots = slots
        # step statistics (slots with a sign buffer; one device, see stats_unsupported): one buffer
        # that every call accumulates into, zeroed before each step
        self.stats = None
        if slots and slots[0].sign is not None:
            self.stats = torch.zeros(len(declaration.STEP_STATS), dtype=torch.float64, device=slots[0].param.device)
        self.calls = [_Call(rule, kind, key, [slots[i] for i in pos], None if whole else pos, self.stats)
                      for key, pos in parts.items()]

    def run(self, grads: list[Tensor], values: StepValues, contiguous: bool) -> Tensor | None:
        """One step with ``grads`` (per slot; ``contiguous`` promises every one is, otherwise
        non-contiguous ones are copied) and ``values``; the non-finite gradient count, or None
        when no tensor has elements."""
        if self.stats is not None:
            self.stats.zero_()
        counts = [call(grads, values, contiguous) for call in self.calls]
        if not counts:
            return None
        return counts[0] if len(counts) == 1 else torch.stack(counts).sum()

    def hold(self) -> HeldGroup | None:
        """The calls held in C++ (``torch.classes.signopt.GroupStep``, csrc/group_step.cpp) over
        the slots they were prepared from, or None where they need per-step Python (complex real
        views) or span several devices."""
        calls = self.calls
        if not calls or any(c.complex for c in calls) or len({c.device for c in calls}) != 1:
            return None
        step = torch.classes.signopt.GroupStep([s.param for s in self.slots])
        for c in calls:
            step.add_call(slots=list(range(len(self.slots))) if c.pos is None else c.pos, **c.lists, **c.fixed)
        rule = self.rule
        if rule.keeps_step():
            step.count([s.state[state_layout.STEP_KEY] for s in self.slots], [s.index for s in self.slots],
                       KEY_DOMAIN, rule.draws_random_bits, rule.uses_bias_correction)
        return HeldGroup(step, calls[0].device, rule, self.stats)


class HeldGroup:
    """A :class:`PreparedGroup`'s calls held in C++ (the :class:`~signopt.backends.Held`
    protocol): ``check`` reads and checks every slot's ``.grad`` in C++ and keeps them,
    ``release`` drops them, ``run`` runs one step on them: it advances the slots' step counters
    and derives the keys and bias corrections :func:`~signopt.scalars.step_values` would give, in
    C++ (``csrc/step_values.h``), so a step costs no Python per tensor."""

    def __init__(self, step: torch.ScriptObject, device: torch.device, rule: UpdateRule,
                 stats: Tensor | None) -> None:
        self.step = step
        self.device = device
        self.rule = rule
        self.stats = stats  # the PreparedGroup's step statistics buffer (None: off)

    def check(self) -> bool:
        return self.step.check()

    def release(self) -> None:
        self.step.release()

    def run(self, group: dict, scalars: GroupScalars) -> Tensor | None:
        if self.stats is not None:
            self.stats.zero_()
        if self.rule.keeps_step():
            seed = group["seed"]
            b1, b2 = bias_betas(group) if self.rule.uses_bias_correction else (0.0, 0.0)
            self.step.advance(seed & MASK32, seed >> 32, b1, b2)
        if scalars.inv_scale is None and scalars.found_inf is None and not any(
                isinstance(v, Tensor) for v in _TENSOR_SCALARS_OF(scalars)):
            return self.step.run(list(_SCALARS_OF(scalars)))  # plain floats: the usual step
        args = scalar_arguments(scalars, self.device)
        return self.step.run([args[s.name] for s in SCALARS], *[args.get(n) for n in _HELD_RUN_TENSORS])


def _pairs(flat: list | None, pos: list[int] | None) -> list:
    """The entries of slots ``pos`` (None: all) of a flat two-per-slot list; [] for None."""
    if flat is None:
        return []
    if pos is None:
        return flat
    return [x for i in pos for x in (flat[2 * i], flat[2 * i + 1])]


def scalar_arguments(sc: GroupScalars, device: torch.device) -> dict:
    """``signopt::step``'s scalar arguments by name for a call on ``device``: every one of
    :data:`~signopt.declaration.SCALARS` (a tensor value goes to its ``<name>_tensor`` argument,
    on ``device``, with 0.0 in its place; absent ``<name>_tensor``: None) and the GradScaler's
    ``inv_scale``/``found_inf``."""
    args: dict = {}
    for s in SCALARS:
        value = getattr(sc, s.name)
        if isinstance(value, Tensor):
            args[f"{s.name}_tensor"] = value.to(device=device, dtype=torch.float32)
            value = 0.0
        args[s.name] = float(value)
    for name in ("inv_scale", "found_inf"):
        t = getattr(sc, name)
        args[name] = None if t is None else t.to(device=device, dtype=torch.float32)
    return args


class _Call:
    """One kernel call of a :class:`PreparedGroup`: slots ``pos`` of the group (``None``: all),
    their state lists (``lists``, by argument name, in the op's order: codes, block scales, tensor
    scales) and fixed arguments
    (``fixed``: kind, formats, block, envelope, flags, offsets, segment lengths)."""

    def __init__(self, rule: UpdateRule, kind: declaration.Kind, key: tuple[torch.device, Format, Format],
                 slots: list[ParamSlot], pos: list[int] | None, stats: Tensor | None) -> None:
        self.device, param_fmt, state_fmt = key
        self.pos = pos
        self.complex = any(s.param.is_complex() for s in slots)  # real views taken per step
        self.params = [s.param for s in slots]
        self.lists: dict[str, list[Tensor]] = {n: [] for n in _LIST_NAMES}
        for slot in state_layout.slots(rule):
            codes_list, scales_list, tscales_list = STEP_LISTS[slot.name]
            scaled = state_fmt.block_scaled and state_layout.per_element(rule, slot)
            tscaled = state_fmt.tensor_scale and state_layout.per_element(rule, slot)
            for s in slots:
                codes, scales = state_layout.stored(rule, s.state, slot)
                self.lists[codes_list].append(codes)
                if scaled:
                    self.lists[scales_list].append(scales)
                if tscaled:
                    self.lists[tscales_list].append(s.state[state_layout.tensor_scale_key(slot.name)])
        if stats is not None:
            self.lists["signs"] = [s.sign for s in slots]
            self.lists["stats"] = [stats]
        seglens = []
        for s in slots:
            seg = state_layout.segment(rule, tuple(real_view(s.param).shape))
            seglens.append(0 if seg is None else seg[0])
        self.fixed = dict(kind=kind.id, param_format=param_fmt.id, state_format=state_fmt.id,
                          state_block=rule.state_block, envelope=declaration.ENVELOPES[rule.envelope],
                          **flags(rule), offsets=[int(s.index_offset) for s in slots], seglens=seglens)
        self.args = tuple(self.lists.values())

    def __call__(self, grads: list[Tensor], values: StepValues, contiguous: bool) -> Tensor:
        params = self.params
        grads = grads if self.pos is None else [grads[i] for i in self.pos]
        if self.complex:
            params = [real_view(p) for p in params]
            grads = [real_view(g) for g in grads]
        if not contiguous:
            grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
        return torch.ops.signopt.step(params, grads, *self.args, **self.fixed,
                                      **scalar_arguments(values.scalars, self.device),
                                      keys=_pairs(values.keys, self.pos), bias=_pairs(values.bias, self.pos))


def load() -> CppBackend:
    """Build (once, cached) and load the extension; ``BackendUnavailable`` with the reason."""
    try:
        build.load()
    except build.BuildUnavailable as exc:
        log.warning("signopt: the cpp backend is unavailable (%s); backend='auto' uses the torch "
                    "backend", exc)
        raise BackendUnavailable(str(exc)) from exc
    return CppBackend(has_cuda=build.with_cuda())

"""Backend registry: which implementation runs a group's update rule.

A backend is resolved once per param group, at construction (or ``add_param_group``), never
inside ``step``. ``backend="auto"``: on a device listed in :data:`MEASURED` (CUDA), when more
than one of its kernel backends is available and supports the group's rule, the measured auto
table decides (:mod:`signopt.backends.autotune`: a step-time table keyed by device, rule,
dtypes and size, filled by a short measurement on synthetic tensors at construction, cached in
JSON); otherwise, and with ``SIGNOPT_AUTO_MEASURE=0``, the first backend in :data:`AUTO_ORDER`
that is available for the group's device and supports its rule. On CPU ``auto`` takes ``cpp``
without measuring. ``"torch"`` (the reference) supports everything. Kernel backends live in
modules listed in :data:`MODULES`; each module exposes ``load() -> Backend`` raising
:class:`BackendUnavailable` with a reason when it cannot run here.
"""
from __future__ import annotations

import importlib
import logging
from typing import Protocol

from torch import Tensor

from ..rule import UpdateRule
from ..scalars import GroupScalars, StepValues
from .slot import ParamSlot

log = logging.getLogger("signopt")

MODULES = {
    "torch": "signopt.backends.torch_backend",
    "cpp": "signopt.backends.cpp_backend",
    "triton": "signopt.backends.triton_backend",
}
CHOICES = ("auto",) + tuple(MODULES)
AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("cpp", "triton", "torch")}
# Devices where ``auto`` chooses among these backends by measured step time (the auto table) when
# more than one can run the group; their order breaks near-ties (autotune.MARGIN).
MEASURED = {"cuda": ("cpp", "triton")}


class BackendUnavailable(RuntimeError):
    """A backend cannot run in this environment (no compiler, no GPU, module missing)."""


class Held(Protocol):
    """A prepared call that reads the gradients itself (C++): ``check`` reads every slot's
    ``.grad`` and says whether each still has the layout the plan was built for (keeping them for
    ``run``; touches nothing), ``release`` drops them unrun, ``run`` runs one step on them with
    the group's ``scalars``: it advances the slots' step counters and derives the values
    :func:`~signopt.scalars.step_values` gives from them and ``group`` (seed, betas) itself."""

    def check(self) -> bool: ...

    def release(self) -> None: ...

    def run(self, group: dict, scalars: GroupScalars) -> Tensor | None: ...


class Prepared(Protocol):
    """A group's step with everything that stays the same between steps (its slots' params,
    state tensors, offsets, segment lengths, tables), kept by ``SignOptimizer`` in the group's
    plan. ``run`` updates the slots in place with this step's ``grads`` (per slot; ``contiguous``
    promises every one is) and returns the count of non-finite gradient elements (0-dim int64)
    or None when nothing was updated. ``hold`` (optional) returns a :class:`Held` over the same
    slots, or None where it cannot. When the slots carry ``sign`` tensors (``step_stats=True``),
    ``stats`` is the last run's fp64 :data:`~signopt.declaration.STEP_STATS` values (filled by
    the run, no host sync), and a backend that computes them has ``stats_unsupported(params) ->
    str | None``."""

    def run(self, grads: list[Tensor], values: StepValues, contiguous: bool) -> Tensor | None: ...


class Backend(Protocol):
    name: str

    def unsupported(self, rule: UpdateRule, params: list[Tensor]) -> str | None:
        """Why this backend cannot run ``rule`` on ``params``, or ``None`` if it can."""

    def prepare(self, rule: UpdateRule, slots: list[ParamSlot]) -> Prepared:
        """The step of ``slots`` (state allocated) with everything that stays the same."""


def step_once(backend: Backend, rule: UpdateRule, slots: list[ParamSlot], values: StepValues) -> Tensor | None:
    """One step of ``slots`` with their ``grad`` (for callers that keep no plan)."""
    return backend.prepare(rule, slots).run([s.grad for s in slots], values, False)


_loaded: dict[str, Backend] = {}


def load(name: str) -> Backend:
    """The backend called ``name``; raises :class:`BackendUnavailable` with the reason."""
    if name not in _loaded:
        try:
            module = importlib.import_module(MODULES[name])
        except ModuleNotFoundError as exc:
            if exc.name != MODULES[name]:
                raise BackendUnavailable(f"backend {name!r} needs {exc.name!r}: {exc}") from exc
            raise BackendUnavailable(f"backend {name!r} is not part of this build") from exc
        _loaded[name] = module.load()
    return _loaded[name]


def resolve(requested: str, rule: UpdateRule, params: list[Tensor]) -> Backend:
    """The backend that will run a group; ``ValueError`` if an explicit choice cannot."""
    if requested not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {requested!r}")
    if requested != "auto":
        try:
            backend = load(requested)
        except BackendUnavailable as exc:
            raise ValueError(f"backend={requested!r} is not available: {exc}") from exc
        reason = backend.unsupported(rule, params)
        if reason is not None:
            raise ValueError(f"backend={requested!r} cannot run this group: {reason}")
        return backend
    device = params[0].device.type if params else "cpu"
    measured = MEASURED.get(device, ())
    if len(measured) > 1:
        from . import autotune  # imported only where auto measures
        if autotune.measure_mode() != "off":
            candidates = {}
            for name in measured:
                backend = _runnable(name, rule, params)
                if backend is not None:
                    candidates[name] = backend
            if len(candidates) > 1:
                try:
                    choice = autotune.choose(candidates, rule, params)
                except Exception as exc:  # noqa: BLE001 - measuring must never break construction
                    log.warning("signopt: backend='auto' could not measure %s (%s: %s); static order",
                                list(candidates), type(exc).__name__, exc)
                    choice = None
                if choice is not None:
                    return candidates[choice]
    for name in AUTO_ORDER.get(device, ("torch",)):
        backend = _runnable(name, rule, params)
        if backend is not None:
            return backend
    return load("torch")


def _runnable(name: str, rule: UpdateRule, params: list[Tensor]) -> Backend | None:
    """Backend ``name`` if it is available and supports the group, else None (``auto`` only:
    an optional backend that fails to load or check is skipped with a warning, never raised)."""
    try:
        backend = load(name)
        return backend if backend.unsupported(rule, params) is None else None
    except BackendUnavailable as exc:
        log.debug("signopt: backend %s skipped: %s", name, exc)
    except Exception as exc:  # noqa: BLE001 - e.g. a Triton version whose API differs
        if name == "torch":
            raise
        log.warning("signopt: backend %s failed to load (%s: %s); backend='auto' skips it",
                    name, type(exc).__name__, exc)
    return None

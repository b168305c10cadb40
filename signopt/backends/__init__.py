"""Backend registry: which implementation runs a group's update rule.

A backend is resolved once per param group, at construction (or ``add_param_group``), never
inside ``step``. ``backend="auto"`` takes the first backend in :data:`AUTO_ORDER` that is
available for the group's device and supports its rule; ``"torch"`` (the reference) supports
everything. Kernel backends live in modules listed in :data:`MODULES`; each module exposes
``load() -> Backend`` raising :class:`BackendUnavailable` with a reason when it cannot run here.
"""
from __future__ import annotations

import importlib
import logging
from typing import Protocol

import torch
from torch import Tensor

from ..rule import UpdateRule
from .slot import ParamSlot
from ..scalars import GroupScalars

log = logging.getLogger("signopt")

MODULES = {
    "torch": "signopt.backends.torch_backend",
    "cpp": "signopt.backends.cpp_backend",
    "triton": "signopt.backends.triton_backend",
}
CHOICES = ("auto",) + tuple(MODULES)
AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("cpp", "triton", "torch")}


class BackendUnavailable(RuntimeError):
    """A backend cannot run in this environment (no compiler, no GPU, module missing)."""


class Backend(Protocol):
    name: str

    def unsupported(self, rule: UpdateRule, params: list[Tensor]) -> str | None:
        """Why this backend cannot run ``rule`` on ``params``, or ``None`` if it can."""

    def step(self, rule: UpdateRule, slots: list[ParamSlot], scalars: GroupScalars) -> Tensor | None:
        """Update every slot in place; return the count of non-finite gradient elements."""


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
    for name in AUTO_ORDER.get(device, ("torch",)):
        try:
            backend = load(name)
        except BackendUnavailable as exc:
            log.debug("signopt: backend %s skipped: %s", name, exc)
            continue
        if backend.unsupported(rule, params) is None:
            return backend
    return load("torch")

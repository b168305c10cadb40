"""The ``"triton"`` backend: multi-tensor Triton kernels (:mod:`signopt.kernels`).

Available where Triton imports and either a CUDA device exists or ``TRITON_INTERPRET=1`` is
set (the interpreter runs the same kernels on CPU tensors; slow, meant for tests). Triton is
imported here, lazily, when the backend is first resolved — never by ``import signopt``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor

from ..rule import UpdateRule
from . import BackendUnavailable, Prepared
from .slot import ParamSlot

KERNELS = "signopt.kernels"


def _kernels_launch() -> ModuleType:
    """``signopt.kernels.launch`` (installed inside signopt, or the checkout's ``kernels/``
    through :mod:`signopt.source_layout`)."""
    try:
        return importlib.import_module(KERNELS + ".launch")
    except ModuleNotFoundError as exc:
        if exc.name not in (KERNELS, KERNELS + ".launch"):
            raise
        raise BackendUnavailable(f"{KERNELS} is not installed with this signopt") from exc


class TritonBackend:
    """Runs every rule except a callable kappa, on CUDA (or CPU tensors in the interpreter)."""

    name = "triton"

    def __init__(self, launch: ModuleType) -> None:
        self._launch = launch

    def unsupported(self, rule: UpdateRule, params: list[Tensor]) -> str | None:
        return self._launch.unsupported(rule, params)

    def stats_unsupported(self, params: list[Tensor]) -> str | None:
        return None

    def prepare(self, rule: UpdateRule, slots: list[ParamSlot]) -> Prepared:
        """The step of ``slots`` with its tables built once (``signopt.kernels.launch.Plan``)."""
        return self._launch.prepare(rule, slots)


def load() -> TritonBackend:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(f"triton cannot be imported: {exc}") from exc
    launch = _kernels_launch()
    if not torch.cuda.is_available() and not launch.interpreting():
        raise BackendUnavailable("no CUDA device; set TRITON_INTERPRET=1 to run the Triton kernels "
                                 "on CPU tensors in the interpreter (slow; for testing)")
    return TritonBackend(launch)

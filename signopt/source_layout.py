"""Where ``signopt.kernels`` and ``signopt.csrc`` come from.

An installed wheel carries them inside the package (``signopt/kernels``, ``signopt/csrc``). A
source checkout keeps them in the top-level folders ``kernels/`` and ``csrc/`` (pyproject
``package-dir``). Neither folder has an ``__init__.py``: a regular package named ``kernels`` in
the repository root would hide every other distribution called ``kernels`` (Hugging Face's, a
``transformers`` dependency) whenever Python runs from there, while a folder without one is only
a namespace portion, which any installed regular package outranks.

Setuptools' editable finder and Python's path finder do not map a subpackage of ``signopt`` to a
folder beside it, so :func:`install` adds one small finder that does, and only in a checkout.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent
# subpackage -> (folder in a checkout, a file that proves the folder is signopt's)
_FOLDERS = {"signopt.kernels": ("kernels", "launch.py"), "signopt.csrc": ("csrc", "ops.cpp")}


class CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds ``signopt.kernels`` / ``signopt.csrc`` as namespace packages over the checkout's
    ``kernels/`` / ``csrc/`` folders."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        return spec


def install() -> None:
    """Register :class:`CheckoutFinder` for the subpackages that are not inside ``signopt/``
    but are in the checkout beside it (nothing to do in an installed wheel)."""
    folders = {}
    for name, (folder, marker) in _FOLDERS.items():
        inside = _PACKAGE / name.rpartition(".")[2]
        beside = _CHECKOUT / folder
        if not inside.is_dir() and (beside / marker).is_file():
            folders[name] = beside
    if folders and not any(isinstance(f, CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.append(CheckoutFinder(folders))

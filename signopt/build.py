"""Build and load the fused C++ (CPU) / CUDA extension ``torch.ops.signopt.*``.

The kernels in ``csrc/`` (package data ``signopt.csrc``) are compiled just in time with
``torch.utils.cpp_extension`` (ninja) into a cache directory keyed by a hash of the sources, the
flags, torch, Python and the CPU; a cached build loads without invoking the compiler.
Prebuild with ``python -m signopt.build``.

* ``SIGNOPT_BUILD_DIR``: cache root (default ``~/.cache/signopt``).
* ``SIGNOPT_CUDA=0``: skip the CUDA kernels even when torch has CUDA.
* ``SIGNOPT_CXX_ARCH``: ``-march`` of the C++ build (default ``native``: the build machine's CPU;
  e.g. ``x86-64-v3`` for any AVX2 machine, ``x86-64-v4`` for AVX-512). The CPU loops are written
  once on a portable vector layer (``csrc/cpu_vec.h``) that compiles to whatever vectors the
  target has; each ``-march`` is its own cached build.

C++ is compiled with ``-O3 -ffp-contract=off`` (no FMA contraction: the kernels must round
exactly like the torch reference; no fast-math) and CUDA with ``--fmad=false``.

The kernel ABI (rule kinds, storage formats, the per-step scalars, the ``signopt::step`` schema)
comes from :mod:`signopt.declaration`: :func:`declaration_header` writes
``declaration.cpp_header()`` as ``signopt_declaration.h`` into the build directory, which is on
the include path of the C++ and nvcc compiles, and its text is part of the cache key.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

NAME = "signopt_ext"
HEADER = "signopt_declaration.h"  # generated from signopt.declaration into the build directory
CPU_SOURCES = ("ops.cpp", "group_step.cpp", "step_values.cpp", "cpu_formats.cpp", "cpu_sign.cpp", "cpu_lion.cpp",
               "cpu_lion_norm.cpp", "cpu_stochastic.cpp")
CUDA_SOURCES = ("cuda_ops.cpp", "cuda_kernels.cu")
# -fno-trapping-math/-fno-math-errno change no value (FP exception flags and errno only) but let
# the compiler if-convert and vectorise the rule loops.
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math", "-fno-math-errno",
             "-march=native", "-fopenmp"]

NVCC_FLAGS = ["-O3", "--fmad=false", "-std=c++17", "-DSIGNOPT_CUDA"]


def cxx_flags() -> list[str]:
    """CXX_FLAGS with ``-march`` from ``SIGNOPT_CXX_ARCH`` (default ``native``; e.g. ``x86-64-v3``
    builds the portable loops without AVX-512, as the tests do)."""
    arch = os.environ.get("SIGNOPT_CXX_ARCH", "native")
    return [f"-march={arch}" if f == "-march=native" else f for f in CXX_FLAGS]


_lock = threading.Lock()
_loaded: str | None = None


class BuildUnavailable(RuntimeError):
    """The extension cannot be built or loaded here (no compiler, no ninja, build error)."""


def csrc_dir() -> Path:
    """Directory holding the kernel sources (package data ``signopt.csrc``: installed inside
    signopt, or the checkout's ``csrc/`` through :mod:`signopt.source_layout`)."""
    try:
        csrc = importlib.import_module("signopt.csrc")
    except ModuleNotFoundError as exc:
        raise BuildUnavailable("the kernel sources (signopt.csrc) are not installed with this signopt") from exc
    for folder in map(Path, csrc.__path__):
        if (folder / "ops.cpp").is_file():
            return folder
    raise BuildUnavailable(f"the kernel sources are incomplete: no ops.cpp in {list(csrc.__path__)}")


def with_cuda() -> bool:
    """Whether this build includes the CUDA kernels."""
    from torch.utils.cpp_extension import CUDA_HOME
    return (os.environ.get("SIGNOPT_CUDA", "1") != "0" and torch.version.cuda is not None
            and torch.cuda.is_available() and CUDA_HOME is not None)


def _cpu_tag() -> str:
    """The CPU's feature flags (-march=native binaries are only valid on the same CPU kind)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sources(cuda: bool) -> list[Path]:
    root = csrc_dir()
    return [root / s for s in CPU_SOURCES + (CUDA_SOURCES if cuda else ())]


def header_text() -> str:
    """The generated header of the kernel ABI (:func:`signopt.declaration.cpp_header`)."""
    from . import declaration
    return declaration.cpp_header()


def declaration_header(directory: Path) -> Path:
    """Write :data:`HEADER` (:func:`header_text`) into ``directory`` (unless it already holds that
    text) and return its path."""
    path = Path(directory) / HEADER
    text = header_text()
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def build_dir(cuda: bool | None = None) -> Path:
    """The cache directory of the build matching the current sources, generated header, flags
    and machine."""
    cuda = with_cuda() if cuda is None else cuda
    h = hashlib.sha256()
    root = csrc_dir()
    for f in sorted(root.iterdir()):
        if f.suffix in (".h", ".cuh", ".cpp", ".cu"):
            h.update(f.name.encode() + f.read_bytes())
    h.update(HEADER.encode() + header_text().encode())
    for part in (cxx_flags(), NVCC_FLAGS if cuda else [], [torch.__version__, sys.version, _cpu_tag(),
                                                         str(cuda)]):
        h.update(repr(part).encode())
    base = Path(os.environ.get("SIGNOPT_BUILD_DIR", Path.home() / ".cache" / "signopt"))
    return base / f"{NAME}_{h.hexdigest()[:16]}"


def _library(directory: Path) -> Path:
    return directory / f"{NAME}.so"


def is_built() -> bool:
    return _library(build_dir()).is_file()


def _check_toolchain(cuda: bool) -> None:
    from torch.utils.cpp_extension import is_ninja_available
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise BuildUnavailable(f"no C++ compiler ({cxx!r} not found on PATH); install g++ or set CXX")
    if not is_ninja_available():
        raise BuildUnavailable("ninja is not installed (pip install ninja)")
    if cuda:
        from torch.utils.cpp_extension import CUDA_HOME
        if not (Path(CUDA_HOME) / "bin" / "nvcc").exists():
            raise BuildUnavailable(f"nvcc not found under CUDA_HOME={CUDA_HOME}")


class BuildProgress:
    """Reports a first build on stderr: what is compiled and where it is cached, then each
    source as its object file appears (ninja compiles several at once), then the total time."""

    def __init__(self, sources: list[Path], directory: Path, out=None) -> None:
        self.sources, self.directory, self.out = sources, directory, out or sys.stderr
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="signopt-build-progress", daemon=True)

    def _say(self, text: str) -> None:
        print(f"signopt: {text}", file=self.out, flush=True)

    def _watch(self) -> None:
        pending = {s.name: s for s in self.sources}
        while pending and not self._stop.wait(0.5):
            for name in sorted(pending):
                stem = pending[name].stem
                if any(self.directory.glob(f"{stem}.*o")):
                    del pending[name]
                    done = len(self.sources) - len(pending)
                    self._say(f"[{done}/{len(self.sources)}] compiled {name} "
                              f"({time.monotonic() - self.start:.0f} s)")

    def __enter__(self) -> BuildProgress:
        self._say(f"building the C++ extension once: {len(self.sources)} sources "
                  f"({', '.join(s.name for s in self.sources)}); the build is cached in {self.directory} "
                  "and later runs load it without compiling")
        self._thread.start()
        return self

    def __exit__(self, kind, value, tb) -> None:
        self._stop.set()
        self._thread.join()
        if kind is None:
            self._say(f"built in {time.monotonic() - self.start:.0f} s")


def load(verbose: bool = False) -> str:
    """Build (if needed) and load the extension; returns the library path.

    Raises :class:`BuildUnavailable` with the reason when it cannot be built or loaded.
    """
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        cuda = with_cuda()
        directory = build_dir(cuda)
        lib = _library(directory)
        if not lib.is_file():
            _check_toolchain(cuda)
            directory.mkdir(parents=True, exist_ok=True)
            from torch.utils.cpp_extension import load as jit_load
            root = csrc_dir()
            sources = _sources(cuda)
            declaration_header(directory)
            try:
                with BuildProgress(sources, directory):
                    # extra_include_paths reach both the C++ and the nvcc compiles
                    jit_load(name=NAME, sources=[str(s) for s in sources],
                             extra_cflags=cxx_flags() + (["-DSIGNOPT_CUDA"] if cuda else []),
                             extra_cuda_cflags=NVCC_FLAGS, extra_ldflags=["-fopenmp"],
                             extra_include_paths=[str(root), str(directory)], build_directory=str(directory),
                             is_python_module=False, verbose=verbose)
            except Exception as exc:  # compiler errors arrive as RuntimeError/CalledProcessError
                raise BuildUnavailable(f"building the signopt extension failed: {exc}") from exc
        if not lib.is_file():
            raise BuildUnavailable(f"the build produced no {lib}")
        torch.ops.load_library(str(lib))
        from . import fake_ops  # noqa: F401  (meta implementations for torch.compile)
        _loaded = str(lib)
        return _loaded


def main(argv: list[str] | None = None) -> int:
    """``python -m signopt.build``: prebuild the extension for this machine and print where it is."""
    parser = argparse.ArgumentParser(
        prog="python -m signopt.build",
        description="Build (once) and load signopt's C++/CUDA extension for this machine, so that the first "
                    "optimizer step does not compile. The build is cached under SIGNOPT_BUILD_DIR "
                    "(default ~/.cache/signopt), keyed by the sources, flags, torch, Python and CPU. "
                    "SIGNOPT_CXX_ARCH sets -march (default native); SIGNOPT_CUDA=0 skips the CUDA kernels.")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands and their output")
    args = parser.parse_args(argv)
    try:
        path = load(verbose=args.verbose)
    except BuildUnavailable as exc:
        print(f"signopt: {exc}", file=sys.stderr)
        return 1
    print(f"signopt extension ready: {path} (CUDA kernels: {'yes' if with_cuda() else 'no'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

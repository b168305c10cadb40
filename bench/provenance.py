"""One ``# provenance:`` line for a result file: date, commit, device, CPU and its ISA, versions and
torch's thread count, so ``bench/report.py`` can name where and with what each figure was measured.

    # provenance: date=2026-12-07T03:00:00Z; commit=b752096; device=cpu; cpu=Intel(R) Xeon(R) ...

Values never contain ``;``. Anything that cannot be read here is written as ``unknown``.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "# provenance:"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_isa() -> str:
    """The widest x86 vector ISA the CPU reports (``avx512f``, ``avx2``, ``sse4_2``) or the arch."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("flags")), [])
    except OSError:
        flags = []
    for isa in ("avx512f", "avx2", "sse4_2"):
        if isa in flags:
            return isa
    return platform.machine() or "unknown"


def _commit() -> str:
    """Short commit of this checkout, ``+dirty`` when tracked files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def _versions() -> str:
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    if torch.version.cuda:
        parts.append(f"cuda {torch.version.cuda}")
    try:
        import triton
        parts.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def provenance(device: str = "cpu") -> dict[str, str]:
    """Provenance fields of a run on ``device`` (``"cpu"`` or ``"cuda"``) started now."""
    dev = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else "cpu"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": _commit(),
        "device": dev,
        "cpu": f"{_cpu_model()} ({os.cpu_count()} logical CPUs)",
        "isa": cpu_isa(),
        "versions": _versions(),
        "threads": str(torch.get_num_threads()),
    }


def provenance_line(device: str = "cpu") -> str:
    """The ``# provenance: k=v; ...`` line for a result file."""
    fields = provenance(device)
    return PREFIX + " " + "; ".join(f"{k}={v.replace(';', ',')}" for k, v in fields.items())


if __name__ == "__main__":
    print(provenance_line())

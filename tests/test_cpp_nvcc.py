"""Every CUDA source in csrc/ compiles with nvcc for sm_80 and sm_90 (compile only).

The .cu files include no torch headers, so this runs without a GPU or a CUDA build of torch.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
NVCC = shutil.which("nvcc") or (os.path.exists("/usr/local/cuda/bin/nvcc") and "/usr/local/cuda/bin/nvcc") or None
CU_FILES = sorted(CSRC.glob("*.cu"))


def test_there_are_cuda_sources():
    assert CU_FILES, "csrc/ holds no .cu file"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles(source, tmp_path):
    cmd = [NVCC, "-c", "-std=c++17", "--fmad=false", "-O1", f"-I{CSRC}",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           str(source), "-o", str(tmp_path / (source.stem + ".o"))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"nvcc failed:\n{out.stderr[-4000:]}"
    assert "warning" not in out.stderr.lower(), out.stderr[-4000:]

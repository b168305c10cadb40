"""Every CUDA source in csrc/ compiles with nvcc for sm_80 and sm_90 (compile only).

The .cu files include no torch headers, so this runs without a GPU or a CUDA build of torch.
The header generated from signopt.declaration (``signopt_declaration.h``, written into the build
directory by signopt.build) is written into the test's directory and put on the include path,
as the build does.
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


def generated_header(directory: Path) -> Path:
    """signopt.build's generated header of the kernel ABI, written into ``directory``."""
    from signopt import build
    return build.declaration_header(directory).parent


def test_there_are_cuda_sources():
    assert CU_FILES, "csrc/ holds no .cu file"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles(source, tmp_path):
    """One nvcc call for both architectures with ``--threads 2``, so that their device passes
    (front end and ptxas, as in the GPU build) run in parallel; both front-end passes are
    needed, since the sources branch on __CUDA_ARCH__ (bf16 conversions from sm_80, FP8 from
    sm_89)."""
    cmd = [NVCC, "-c", "-std=c++17", "--fmad=false", "-O1", f"-I{CSRC}", f"-I{generated_header(tmp_path)}",
           "--threads", "2",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           str(source), "-o", str(tmp_path / (source.stem + ".o"))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"nvcc failed:\n{out.stderr[-4000:]}"
    assert "warning" not in out.stderr.lower(), out.stderr[-4000:]


CUDA_INCLUDE = next((p / "include" for p in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")),
                                             Path(NVCC or "/").resolve().parent.parent)
                     if (p / "include" / "cuda_runtime.h").exists()), None)
CUDA_BINDINGS = ("cuda_ops.cpp", "group_step.cpp")  # the C++ compiled with -DSIGNOPT_CUDA on GPUs


@pytest.mark.skipif(CUDA_INCLUDE is None or shutil.which("g++") is None, reason="needs the CUDA headers and g++")
@pytest.mark.parametrize("name", CUDA_BINDINGS)
def test_cuda_bindings_parse(name, tmp_path):
    """The torch bindings of the CUDA kernels, built only where torch has CUDA, parse with
    -DSIGNOPT_CUDA against this torch's headers and the CUDA toolkit's (g++ -fsyntax-only). A CPU
    torch wheel lacks one generated header, c10/cuda/impl/cuda_cmake_macros.h: an empty one
    stands in (it only sets build macros)."""
    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-DSIGNOPT_CUDA", f"-I{CSRC}", f"-I{generated_header(tmp_path)}",
           "-isystem", str(tmp_path)]
    for inc in include_paths() + [str(CUDA_INCLUDE)]:
        cmd += ["-isystem", inc]
    out = subprocess.run(cmd + [str(CSRC / name)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"g++ -fsyntax-only failed:\n{out.stderr[-4000:]}"

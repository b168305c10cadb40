"""The CPU vector layer (csrc/cpu_vec.h) on every target this machine can compile for, without
torch: the vector loops compute the scalar loops' bits (tests/cpu_vec_check.cpp, compiled for the
target and run: natively, or under qemu for aarch64), and the compiler emits them as vector code
of the target's width (the assembly of a probe: no lane-by-lane fallback).

The extension's own tests (test_cpp_core.py, test_step_digest.py, test_parity.py) hold the build
this machine runs (``-march=native``, or ``SIGNOPT_CXX_ARCH``); these cover the layer's other
forms: SSE2 and SSE4 (4 lanes), AVX2 (8), AVX-512 (16), the generic layer
(``-DSIGNOPT_VEC_GENERIC=1``, no ISA primitives) and NEON (with ``aarch64-linux-gnu-g++``, run
with ``qemu-aarch64-static`` when installed; the README and ``.ci/run`` say how to get both).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from signopt import build

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CHECK = Path(__file__).parent / "cpu_vec_check.cpp"
FLAGS = ["-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math", "-fno-math-errno"]
CROSS = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64-static"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _x86() -> bool:
    import platform
    return platform.machine() in ("x86_64", "AMD64")


def _avx512() -> bool:
    return {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= _cpu_flags()


# target id -> (compiler, flags, how to run it: None natively, "qemu", or "skip: why")
def _targets() -> dict[str, tuple[str, list[str], str | None]]:
    t: dict[str, tuple[str, list[str], str | None]] = {}
    if _x86():
        t["sse2"] = ("g++", ["-march=x86-64"], None)
        t["sse4"] = ("g++", ["-march=x86-64-v2"], None if "sse4_1" in _cpu_flags() else "skip: no SSE4.1 here")
        t["avx2"] = ("g++", ["-march=x86-64-v3"], None if "avx2" in _cpu_flags() else "skip: no AVX2 here")
        t["avx512"] = ("g++", ["-march=skylake-avx512"], None if _avx512() else "skip: no AVX-512 here")
        t["generic"] = ("g++", ["-march=x86-64-v3", "-DSIGNOPT_VEC_GENERIC=1"],
                        None if "avx2" in _cpu_flags() else "skip: no AVX2 here")
    else:
        t["native"] = ("g++", ["-march=native"], None)
        t["generic"] = ("g++", ["-march=native", "-DSIGNOPT_VEC_GENERIC=1"], None)
    t["neon"] = (CROSS, ["-march=armv8-a", "-static"], "qemu")
    return t


TARGETS = _targets()
# the default test run checks one 4-lane target (the extension's tests hold the native one);
# the rest are slow (a compile of the check takes ~30 s): .ci/run runs them
FAST = {"sse2", "neon"}


@pytest.fixture(scope="module")
def header_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("decl")
    build.declaration_header(d)
    return d


def _need(compiler: str) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")


@pytest.mark.parametrize("target", [pytest.param(t, marks=() if t in FAST else pytest.mark.slow) for t in TARGETS])
def test_vector_loops_match_scalar_loops(target, header_dir, tmp_path):
    """tests/cpu_vec_check.cpp on the target: random bits v2 runs, the bf16 and FP8 codecs, the
    apply and cautious-count loops of every vector kind over every format and option, and the
    reductions, each bit for bit against the scalar code (rules.h, casts.h, philox.h)."""
    compiler, flags, run = TARGETS[target]
    _need(compiler)
    if run and run.startswith("skip"):
        pytest.skip(run[6:])
    exe = tmp_path / f"check_{target}"
    out = subprocess.run([compiler, *FLAGS, "-O1", *flags, f"-I{CSRC}", f"-I{header_dir}", str(CHECK), "-o", str(exe)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    cmd = [str(exe)]
    if run == "qemu":
        if shutil.which(QEMU) is None:
            pytest.skip(f"compiled for aarch64; {QEMU} is not installed to run it")
        cmd = [QEMU, str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert re.match(r"OK \d+ ", res.stdout), res.stdout


PROBE = r"""
#include "cpu_vloops.h"
using namespace signopt; using namespace signopt::cpu;
#define LOOP(NAME, K, PF, SF) \
  int64_t NAME(const vec::Loop<K, PF, SF>& l, const vec::Loop<K, PF, SF>::Ptr& P, int64_t n, \
               const vec::Loop<K, PF, SF>::Tens T, const vec::Loop<K, PF, SF>::Dec& d, \
               vec::Loop<K, PF, SF>::Acc& a) { \
    typename vec::Loop<K, PF, SF>::Stats st; /* statistics off (STATS = false) */ \
    return l.run_acc<vec::APPLY, false>(P, T, n, 0.5f, d, d, d, a, st); }
LOOP(probe_lion_bf16_e4m3, K_LION_L1, FmtBF16, FmtE4M3)
LOOP(probe_sto_f32_bf16, K_STO_MOMENTUM, FmtF32, FmtBF16)
LOOP(probe_adamw_f32_e5m2, K_STO_ADAMW, FmtF32, FmtE5M2)
LOOP(probe_norm_bf16_f32, K_LION_NORM, FmtBF16, FmtF32)
void probe_philox(uint32_t k0, uint32_t k1, uint64_t j, uint32_t* out) { vec::philox_group(k0, k1, 1u, j, out); }
float probe_encode_e4m3(uint8_t* r, int64_t n, const float* v, const uint32_t* w) {
  return vec::VFmt<FmtE4M3>::encode_block(r, n, v, w, 1.0f);
}
double probe_norm_sum(const vec::VScalars& s, int64_t n, const float* p, const float* g, const float* m) {
  return vec::norm_sum<K_LION_NORM>(s, n, p, g, m);
}
"""

# target -> (compiler, flags, a vector op of the target's width that must appear, registers that
# must not appear (a wider ISA), the lane-by-lane moves a fallback would be made of)
CODEGEN = {
    "avx2": ("g++", ["-march=x86-64-v3"], r"\bvmulps\s+[^\n]*%ymm", r"%zmm", r"\s(v?pinsr[bwdq]|v?pextr[bwdq])\s"),
    "avx512": ("g++", ["-march=skylake-avx512"], r"\bvmulps\s+[^\n]*%zmm", None, r"\s(v?pinsr[bwdq]|v?pextr[bwdq])\s"),
    "sse4": ("g++", ["-march=x86-64-v2"], r"\bmulps\s+%xmm", r"%[yz]mm", r"\s(v?pinsr[bwdq]|v?pextr[bwdq])\s"),
    "neon": (CROSS, ["-march=armv8-a"], r"\bfmul\s+v\d+\.4s", None, r"^\s+(ins|umov|smov)\s"),
}


def _functions(asm: str) -> dict[str, list[str]]:
    funcs: dict[str, list[str]] = {}
    cur = None
    for line in asm.splitlines():
        m = re.match(r"^([A-Za-z_][\w.$]*):", line)
        if m and not m.group(1).startswith("."):
            cur = m.group(1)
            funcs[cur] = []
        elif cur and line.startswith("\t") and not line.startswith("\t."):
            funcs[cur].append(line)
    return funcs


@pytest.mark.parametrize("target", list(CODEGEN))
def test_vector_loops_compile_to_vector_code(target, header_dir, tmp_path):
    """The probe's loops (Lion over bf16/E4M3, the stochastic sign over bf16 state, AdamW-base
    over E5M2, Lion-kappa's norm loop and sum, the Philox group, the FP8 encoder) compiled with
    the build's flags (-O3) use vectors of the target's width, the Philox products its widening
    multiply, and no function moves lanes one at a time through general registers (a handful
    per function at most: the horizontal reductions at the end of a piece or block)."""
    compiler, flags, vector_op, wider, lane_moves = CODEGEN[target]
    _need(compiler)
    src = tmp_path / "probe.cpp"
    src.write_text(PROBE)
    asm = tmp_path / "probe.s"
    out = subprocess.run([compiler, *FLAGS, "-O3", *flags, f"-I{CSRC}", f"-I{header_dir}", "-S", str(src),
                          "-o", str(asm)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    text = asm.read_text()
    assert re.search(vector_op, text), f"no {vector_op} in the {target} probe"
    if wider:
        assert not re.search(wider, text), f"the {target} probe uses {wider} registers"
    mul = r"\bumull2?\s" if target == "neon" else r"\bv?pmuludq\s"
    assert len(re.findall(mul, text)) >= 10 * 2, "Philox's products are not widening vector multiplies"
    for name, lines in _functions(text).items():
        moves = sum(1 for ln in lines if re.search(lane_moves, ln, re.M))
        assert moves <= 8, f"{name}: {moves} lane-by-lane moves in the {target} probe"

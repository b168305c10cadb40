"""Ahead-of-time sm_90 compilation of every Triton kernel, and the PTX of the exact rules.

The interpreter divides exactly, never fuses FMA and keeps scalars in fp64, so parity under
``TRITON_INTERPRET=1`` cannot show what the GPU compiler does. ``triton.compile`` with a CUDA
target runs on this CPU; the PTX of every exact rule must contain no ``fma.rn.f32``, no
approximate division / reciprocal / square root and no flush-to-zero fp32 arithmetic.

``@triton.jit`` returns uncompilable interpreted functions when ``TRITON_INTERPRET=1`` (which
``conftest.py`` sets without a GPU), so the compilation runs in a subprocess without it. A
negative control compiles a kernel with fusion on, ``/`` and ``tl.sqrt`` and checks that the
patterns do catch them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
from signopt.backends.triton_backend import _kernels_launch
_kernels_launch()
from signopt.kernels import aot
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget

@triton.jit
def sloppy(x_ptr, y_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    x = tl.load(x_ptr + offs)
    y = tl.load(y_ptr + offs)
    tl.store(x_ptr + offs, x * y + x / y + tl.sqrt(y))

def compile_sloppy():
    from triton.compiler import ASTSource
    src = ASTSource(sloppy, {"x_ptr": "*fp32", "y_ptr": "*fp32", "N": "constexpr"}, {"N": 128})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": True}).asm["ptx"]

print(json.dumps({"control": aot.forbidden_in(compile_sloppy())}), flush=True)
for v in aot.variants():
    for p, ptx in aot.compile_variant(v).items():
        print(json.dumps({"variant": v.name, "pass": p, "exact": v.exact,
                          "forbidden": aot.forbidden_in(ptx), "has_ptx": ".entry" in ptx}), flush=True)
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    script = tmp_path_factory.mktemp("ptx") / "compile_all.py"  # @jit needs a source file
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return lines[0], lines[1:]


def test_patterns_catch_sloppy_code(compiled):
    control, _ = compiled
    assert set(control["control"]) >= {"fma.rn.f32", "approximate division", "approximate sqrt"}


def test_every_kernel_compiles_for_sm90(compiled):
    _, results = compiled
    from_variants = {(r["variant"], r["pass"]) for r in results}
    assert len(from_variants) >= 25
    assert all(r["has_ptx"] for r in results)
    passes = {r["pass"] for r in results}
    assert passes >= {"update", "chunks_a", "finalize_a", "chunks_count", "finalize_count", "chunks_ts",
                      "finalize_ts"}
    # NVFP4 state: its codec in the update pass, its tensor-scale reduction in the other two
    assert {r["pass"] for r in results if "nvfp4" in r["variant"]} == {"update", "chunks_ts", "finalize_ts"}


def test_exact_rules_have_exact_ptx(compiled):
    _, results = compiled
    bad = [(r["variant"], r["pass"], r["forbidden"]) for r in results if r["exact"] and r["forbidden"]]
    assert not bad, f"inexact PTX in exact rules: {bad}"

"""The vector layer's ISA primitives against their generic forms (csrc/cpu_vec.h).

    python bench/vec_primitives.py [--march x86-64-v3,native] [--out FILE]

For each ``-march``, compiles ``bench/vec_primitives.cpp`` twice with the extension's flags (the
ISA forms, and ``-DSIGNOPT_VEC_GENERIC=1``: the generic forms everywhere), runs both on one
thread several times alternately and prints ns per element (best run) of loops that are mostly
one primitive: Philox (``mul32``), the FP8 codec (byte conversions, max/min), the bf16 codec
(16-bit conversions) and sqrt, with generic / ISA.  The figures in cpu_vec.h's comment come from
``bench/results/vec_primitives_cpu.txt``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.provenance import provenance_line  # noqa: E402
from signopt import build  # noqa: E402

ROUNDS = 5


def compile_run(march: str, generic: bool, tmp: Path, header: Path) -> Path:
    exe = tmp / f"vp_{march}_{int(generic)}"
    flags = [f for f in build.CXX_FLAGS if not f.startswith("-march") and f != "-fopenmp"]
    cmd = [os.environ.get("CXX", "g++"), "-std=c++17", *flags, f"-march={march}", f"-I{ROOT / 'csrc'}",
           f"-I{header}", str(ROOT / "bench" / "vec_primitives.cpp"), "-o", str(exe)]
    if generic:
        cmd.append("-DSIGNOPT_VEC_GENERIC=1")
    subprocess.run(cmd, check=True)
    return exe


def run(exe: Path) -> dict[str, float | str]:
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=False).stdout
    res: dict[str, float | str] = {}
    for line in out.splitlines():
        key, *vals = line.split()
        res[key] = " ".join(vals) if key == "layer" else float(vals[0])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--march", default="x86-64-v3,native")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lines = [provenance_line("cpu"), f"load average {os.getloadavg()[0]:.2f} at start; one thread; ns per element, "
             f"the best of {ROUNDS} alternating runs of each build (each run the best of 30 repetitions)"]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        build.declaration_header(tmp)
        for march in args.march.split(","):
            isa, gen = compile_run(march, False, tmp, tmp), compile_run(march, True, tmp, tmp)
            best: dict[bool, dict[str, float | str]] = {}
            for _ in range(ROUNDS):
                for generic, exe in ((False, isa), (True, gen)):
                    r = run(exe)
                    prev = best.setdefault(generic, r)
                    for k, v in r.items():
                        if isinstance(v, float):
                            prev[k] = min(prev[k], v)  # type: ignore[type-var]
            lines.append(f"\n-march={march}: layer {best[False]['layer']} (ISA forms) / {best[True]['layer']} (generic)")
            lines.append(f"{'loop':12s} {'generic ns':>10s} {'ISA ns':>8s} {'generic/ISA':>11s}")
            for k in ("philox", "fp8_codec", "bf16_codec", "sqrt"):
                g, i = best[True][k], best[False][k]
                lines.append(f"{k:12s} {g:10.3f} {i:8.3f} {g / i:10.2f}x")  # type: ignore[operator]
    lines.append(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

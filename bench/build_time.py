"""Cold-cache cost of the JIT build: ``python -m signopt.build`` into an empty
``SIGNOPT_BUILD_DIR``, timed (wall and CPU seconds of the build process and the compilers it
starts), with the load average before and after (other jobs on the machine slow it down).

    python bench/build_time.py --out bench/results/build_cpu.txt
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.provenance import provenance_line  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="also write the report to this file")
    args = ap.parse_args()
    lines = [provenance_line(), "# cold build: python -m signopt.build into an empty SIGNOPT_BUILD_DIR"]
    with tempfile.TemporaryDirectory() as cache:
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "signopt.build"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "SIGNOPT_BUILD_DIR": cache})
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        load1 = os.getloadavg()[0]
        t1 = time.perf_counter()
        warm = subprocess.run([sys.executable, "-m", "signopt.build"], capture_output=True, text=True,
                              env={**os.environ, "SIGNOPT_BUILD_DIR": cache})
        warm_wall = time.perf_counter() - t1
    lines += [line for line in proc.stdout.splitlines() if line.strip()]
    lines += [f"exit status {proc.returncode}",
              f"cold build: {wall:.1f} s wall, {usage.ru_utime + usage.ru_stime:.1f} s CPU "
              f"(build process and compilers), {os.cpu_count()} logical CPUs",
              f"1-min load average {load0:.2f} before, {load1:.2f} after",
              f"second call (cached, loads without compiling): {warm_wall:.1f} s wall, exit status {warm.returncode}"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Compile-check the CPU kernels for aarch64 (NEON) with Debian's cross compiler, and run the
# vector layer's standalone check (tests/cpu_vec_check.cpp) under qemu when it is installed.
# Installs g++-aarch64-linux-gnu (and qemu-user-static) with apt-get where it can (root, apt,
# network); otherwise says what is missing and exits 0, so CI without them still passes.
#   .ci/aarch64_check.sh            (from the repository root, with signopt and torch installed)
set -uo pipefail
cd "$(dirname "$0")/.."
CXX=aarch64-linux-gnu-g++
install() {  # install() PACKAGE: apt-get, if this machine can
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "aarch64 check: installing $1"
    timeout 600 apt-get install -y -q --no-install-recommends "$1" >/dev/null 2>&1 ||
      { timeout 300 apt-get update -q >/dev/null 2>&1 &&
        timeout 600 apt-get install -y -q --no-install-recommends "$1" >/dev/null 2>&1; } || true
  fi
}
command -v "$CXX" >/dev/null || install g++-aarch64-linux-gnu
if ! command -v "$CXX" >/dev/null; then
  echo "aarch64 check: SKIPPED ($CXX is not installed and could not be installed here;" \
       "apt-get install g++-aarch64-linux-gnu)"
  exit 0
fi
command -v qemu-aarch64-static >/dev/null || install qemu-user-static
set -e
out=$(mktemp -d)
python - "$CXX" "$out" <<'PY'
import os, subprocess, sys, time
import torch.utils.cpp_extension as ext
from signopt import build
cxx, out = sys.argv[1], sys.argv[2]
build.declaration_header(out)
root = build.csrc_dir()
import sysconfig
from concurrent.futures import ThreadPoolExecutor
# the build's flags with -march for aarch64 and -O1 (a compile check: every error a full build
# would report, in a fraction of the time)
flags = [f for f in build.CXX_FLAGS if not f.startswith(("-march", "-O"))] + ["-march=armv8-a", "-O1", "-std=c++20",
                                                                              "-fPIC"]
inc = [f"-I{root}", f"-I{out}"] + [f"-isystem{p}" for p in ext.include_paths()]
inc.append(f"-isystem{sysconfig.get_paths()['include']}")


def check(src):
    t0 = time.monotonic()
    r = subprocess.run([cxx, *flags, *inc, "-DTORCH_EXTENSION_NAME=signopt_ext", "-DTORCH_API_INCLUDE_EXTENSION_H",
                        "-c", str(root / src), "-o", os.path.join(out, src + ".o")], capture_output=True, text=True)
    return src, r, time.monotonic() - t0


failed = False
with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    for src, r, dt in pool.map(check, build.CPU_SOURCES):
        if r.returncode:
            print(r.stderr[-4000:])
            print(f"aarch64 check: {src} does not compile for aarch64")
            failed = True
        else:
            print(f"aarch64 check: {src} compiles ({dt:.0f} s)")
sys.exit(1 if failed else 0)
PY
rm -rf "$out"
# the vector layer's NEON form against the scalar code (under qemu when installed)
python -m pytest -q tests/test_cpu_vec.py -k neon

"""Repack the installed bitsandbytes 0.50.2 as a wheel that keeps only the CPU and CUDA 13.0
libraries (the GPU image's torch is built for CUDA 13.0).

    python bench/wheels/trim_bitsandbytes.py bench/wheels
"""
from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

KEEP_LIBS = {"libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"}
STAMP = (2026, 11, 27, 0, 0, 0)  # fixed member times: the same input gives the same wheel


def wheel_files(pkg: Path, dist: Path) -> list[Path]:
    """The package without bytecode and without the other builds' libraries, and the dist-info
    without the installer's records."""
    files = [f for f in sorted(pkg.rglob("*")) if f.is_file() and "__pycache__" not in f.parts
             and not (f.name.startswith("libbitsandbytes_") and f.name not in KEEP_LIBS)]
    files += [f for f in sorted(dist.rglob("*")) if f.is_file()
              and f.name not in ("RECORD", "INSTALLER", "REQUESTED")]
    return files


def main(out_dir: str) -> None:
    import bitsandbytes
    pkg = Path(bitsandbytes.__file__).parent
    site = pkg.parent
    dist = site / f"bitsandbytes-{bitsandbytes.__version__}.dist-info"
    out = Path(out_dir) / f"bitsandbytes-{bitsandbytes.__version__}-py3-none-manylinux_2_24_x86_64.whl"
    record = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in wheel_files(pkg, dist):
            arc, data = f.relative_to(site).as_posix(), f.read_bytes()
            z.writestr(zipfile.ZipInfo(arc, date_time=STAMP), data, zipfile.ZIP_DEFLATED)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")
        rec = f"{dist.name}/RECORD"
        record.append(f"{rec},,")
        z.writestr(zipfile.ZipInfo(rec, date_time=STAMP), "\n".join(record) + "\n", zipfile.ZIP_DEFLATED)
    print(out, out.stat().st_size)


if __name__ == "__main__":
    main(sys.argv[1])

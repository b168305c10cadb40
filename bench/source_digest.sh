#!/usr/bin/env bash
# SHA-256 over the package, kernel and benchmark sources (names and contents): the digest
# bench/gpu_check.sh records, to match a device run to a commit.
cd "$(dirname "$0")/.."
git ls-files -co --exclude-standard -- csrc kernels signopt bench tests pyproject.toml 2>/dev/null \
  | grep -v '^bench/results/' | LC_ALL=C sort | while read -r f; do [ -f "$f" ] && { echo "$f"; cat "$f"; }; done \
  | sha256sum | cut -c1-16

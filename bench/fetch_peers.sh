#!/usr/bin/env bash
# Fetch the peer wheels bench/gpu_check.sh carries to a GPU machine without network into
# bench/wheels/ (ignored by git; pass it in the device tool's `carry`). Needs pip with an index
# and, for the trimmed bitsandbytes wheel, torch installed in $PYTHON's environment.
#
#   bash bench/fetch_peers.sh            # or PYTHON=/path/to/python bash bench/fetch_peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=bench/wheels
mkdir -p "$OUT"
"$PY" -m pip download -q --no-deps -d "$OUT" lion-pytorch==0.2.5 pytorch_optimizer==4.1.0 packaging==26.3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download -q --no-deps -d "$TMP/dl" bitsandbytes==0.50.2
"$PY" -m pip install -q --no-deps --no-compile --target "$TMP/site" "$TMP"/dl/bitsandbytes-*.whl
PYTHONPATH="$TMP/site" "$PY" bench/wheels/trim_bitsandbytes.py "$OUT"
ls -l "$OUT"/*.whl

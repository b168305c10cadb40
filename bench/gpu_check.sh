#!/usr/bin/env bash
# GPU check of the cpp and triton backends in one command, inside a time budget:
#
#     bash bench/gpu_check.sh            # GPU_CHECK_BUDGET_S=390 by default (6.5 min)
#     GPU_CHECK_SKIP="autotune step_cuda" bash bench/gpu_check.sh   # leave stages out by name
#
# A GPU session has 15 min of device time in all, machine start included, so the whole script
# stays well under 8 min: each stage runs under `timeout` with min(its own limit, what is left of
# the budget), in priority order; a stage that cannot get MIN_STAGE_S seconds is skipped with a
# line, and a stage that fails or times out does not stop the next one.
#
#   build      python -m signopt.build: the C++/CUDA extension, built here, inside the budget
#   tests      the CUDA-marked tests (cpp CUDA kernels, their packed 4-bit state against the torch
#              reference bit for bit; backend='auto' measuring on CUDA; the cpp CUDA kernels' step
#              statistics against the torch reference)
#   step_gpu   bench/step_gpu.py: cpp CPU-vs-GPU bit identity, launches per group, 1B bandwidth
#   overhead   bench/step_overhead.py --device cuda: host cost of a step over 300 tiny tensors
#   triton_gpu bench/triton_gpu.py: Triton-vs-reference bit identity, GPT-2 list vs lion-pytorch's
#              Triton Lion and vs cpp, what backend='auto' picks, 1B bandwidth
#   autotune   python -m signopt.backends.autotune --quick: the measured auto table
#   step_cuda  bench/step.py --device cuda --quick: every optimizer x backend x state, peers
#   ncu        Nsight Compute on the Lion apply kernels (cpp fp32, cpp bf16/E4M3, triton fp32)
#
# Outputs: bench/results/gpu_<device>/<stage>.txt (overwritten by each run), auto_table.json
# (the table every stage that measures writes to) and summary.txt (stage, status, seconds); copied to $OUT too when the
# device runner sets it, as one tarball (only $OUT comes back from the device machine, at most
# 8 files: unpack it into bench/results/ and commit it there).
#
# No network: it runs from this checkout (PYTHONPATH; nothing is pip-installed into the image),
# and the peers the GPU image lacks (lion-pytorch, pytorch-optimizer, bitsandbytes trimmed to its
# CUDA 13.0 library, packaging) come from bench/wheels/ (fetched by bench/fetch_peers.sh and
# carried; not committed), unpacked into a temporary directory only when their module is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-390}
MIN_STAGE_S=${MIN_STAGE_S:-20}
START=$SECONDS
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
unset TRITON_INTERPRET
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

DEVICE=$($PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>/dev/null)
if [ -z "$DEVICE" ]; then
  echo "gpu_check: no CUDA device visible to $PY (torch: $($PY -c 'import torch; print(torch.__version__)' 2>&1)); nothing run"
  exit 1
fi
SLUG=$(echo "$DEVICE" | tr -c 'A-Za-z0-9\n' '-' | tr -s '-' | sed 's/-$//')
RES="bench/results/gpu_${SLUG}"
mkdir -p "$RES"
SUMMARY="$RES/summary.txt"
export SIGNOPT_AUTO_TABLE="$PWD/$RES/auto_table.json"
{
  echo "gpu_check on $DEVICE, $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET}s"
  # The device runner copies the working tree but not always current git metadata: name the
  # sources by content (bench/source_digest.sh prints the same digest for a checkout here).
  echo "sources $(bash bench/source_digest.sh)"
  $PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)"
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
} | tee "$SUMMARY"

SITE=$(mktemp -d /tmp/signopt-wheels.XXXXXX)
ls bench/wheels/*.whl >/dev/null 2>&1 || echo "peer wheels: none in bench/wheels (run bench/fetch_peers.sh and carry bench/wheels); peers the image lacks print 'peer missing'" | tee -a "$SUMMARY"
for whl in bench/wheels/*.whl; do
  [ -e "$whl" ] || continue
  mod=$(basename "$whl" | cut -d- -f1)
  if ! $PY -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$mod') is None)" 2>/dev/null; then
    if $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$whl"; then
      echo "peer wheel: $(basename "$whl") -> $SITE" | tee -a "$SUMMARY"
    else
      echo "peer wheel: $(basename "$whl") did not install" | tee -a "$SUMMARY"
    fi
  fi
done
export PYTHONPATH="$PYTHONPATH:$SITE"

FAILED=0
stage() {  # stage NAME LIMIT_S CMD...
  local name=$1 limit=$2
  shift 2
  local left=$(( BUDGET - (SECONDS - START) ))
  if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
    printf '%-11s %-16s %5s   (GPU_CHECK_SKIP)\n' "$name" "SKIPPED" "-" | tee -a "$SUMMARY"
    return
  fi
  (( limit > left )) && limit=$left
  if (( left < MIN_STAGE_S )); then
    printf '%-11s %-16s %5s   (%ds of the budget left)\n' "$name" "SKIPPED" "-" "$left" | tee -a "$SUMMARY"
    FAILED=1
    return
  fi
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$RES/$name.txt"
  local rc=${PIPESTATUS[0]} status=ok
  if (( rc == 124 || rc == 137 )); then status="TIMED OUT"; elif (( rc != 0 )); then status="FAILED rc=$rc"; fi
  (( rc == 0 )) || FAILED=1
  printf '%-11s %-16s %4ds\n' "$name" "$status" $(( SECONDS - t0 )) | tee -a "$SUMMARY"
}

stage build      240 $PY -m signopt.build
stage tests      210 $PY -m pytest -q -p no:cacheprovider -m cuda tests/test_cpp_cuda.py tests/test_backend_auto.py \
  tests/test_step_stats.py
stage step_gpu    90 $PY bench/step_gpu.py
stage overhead    30 $PY bench/step_overhead.py --device cuda --repeats 3 --steps 50
stage triton_gpu 150 $PY bench/triton_gpu.py
stage autotune    75 $PY -m signopt.backends.autotune --quick --budget-s 45 --table "$SIGNOPT_AUTO_TABLE"
stage step_cuda  180 $PY bench/step.py --device cuda --quick
if command -v ncu >/dev/null; then
  stage ncu       90 ncu --kernel-name regex:'apply_kernel|update_kernel' --launch-count 6 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis \
    --section WarpStateStats --section InstructionStats $PY bench/step_gpu.py --ncu
fi

printf 'total %ds of %ds\n' $(( SECONDS - START )) "$BUDGET" | tee -a "$SUMMARY"
rm -rf "$SITE"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  tar -czf "$OUT/gpu_results.tgz" "$RES" && echo "packed $RES into \$OUT/gpu_results.tgz"
fi
exit $FAILED

#!/usr/bin/env bash
# GPU check of the cpp and triton backends in one command (< 8 min on an H100): install, build
# the CUDA extension, run the CUDA-marked tests, then the GPU bench rows (1B-parameter bandwidth
# vs device-to-device copy, launches per group on a GPT-2-size list, CPU-vs-GPU bit identity,
# Triton vs the CUDA backend and vs lion-pytorch's Triton Lion).
# Peers missing on the GPU machine travel as wheels: pip install --no-deps bench/wheels/*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
pip install -q --no-deps --no-build-isolation -e .
if compgen -G "bench/wheels/*.whl" > /dev/null; then pip install -q --no-deps bench/wheels/*.whl; fi
time python -m signopt.build
python -m pytest -q -m cuda -x tests/test_cpp_cuda.py
python -m pytest -q -m cuda
python bench/step_gpu.py "$@"
python bench/triton_gpu.py

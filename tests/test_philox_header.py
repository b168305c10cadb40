"""``csrc/philox.h`` on the host: ``element_word`` and ``run_words`` (the words the CUDA kernels
draw, random bits v2) equal :func:`signopt.philox.element_word`.

The header is torch-free and host/device (``SIGNOPT_HD``), so g++ compiles it here without a GPU:
a small program prints, for each (key, purpose, first index), ``element_word`` of a run of
indices and the ``run_words<4>`` / ``run_words<8>`` runs the CUDA count and apply kernels draw,
starting at every residue mod 4 and crossing multiples of 2**32 in the element and the call index.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from signopt.declaration import RANDOM_PURPOSES
from signopt.philox import element_word

CSRC = Path(__file__).resolve().parent.parent / "csrc"

PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include "philox.h"
using namespace signopt;

int main(int argc, char** argv) {
  const uint32_t k0 = (uint32_t)strtoull(argv[1], nullptr, 0), k1 = (uint32_t)strtoull(argv[2], nullptr, 0);
  const uint32_t purpose = (uint32_t)strtoul(argv[3], nullptr, 0);
  const uint64_t i0 = strtoull(argv[4], nullptr, 0);
  uint32_t w4[4], w8[8];
  for (int k = 0; k < 16; ++k) printf("%u ", element_word(k0, k1, i0 + (uint64_t)k, purpose));
  printf("\n");
  for (int q = 0; q < 4; ++q) {
    run_words<4>(k0, k1, i0 + 4 * (uint64_t)q, purpose, w4);
    for (int k = 0; k < 4; ++k) printf("%u ", w4[k]);
  }
  printf("\n");
  for (int q = 0; q < 2; ++q) {
    run_words<8>(k0, k1, i0 + 8 * (uint64_t)q, purpose, w8);
    for (int k = 0; k < 8; ++k) printf("%u ", w8[k]);
  }
  printf("\n");
  return 0;
}
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("needs g++")
    d = tmp_path_factory.mktemp("philox_header")
    (d / "main.cpp").write_text(PROGRAM)
    exe = d / "words"
    out = subprocess.run([cxx, "-std=c++17", "-O2", f"-I{CSRC}", str(d / "main.cpp"), "-o", str(exe)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    return exe


@pytest.mark.parametrize("key", [(0, 0), (0xDEADBEEF, 0x12345678), (0xFFFFFFFF, 0xFFFFFFFF)])
@pytest.mark.parametrize("i0", [0, 1, 2, 3, 4, 1001, 2**32 - 6, 2**32 - 1, 2**34 - 9, 2**34 - 2,
                                2**40 + 3, 2**62 + 5])
def test_element_word_and_run_words_follow_the_reference(program, key, i0):
    ref_idx = torch.arange(16, dtype=torch.int64) + i0
    for purpose, p in RANDOM_PURPOSES.items():
        out = subprocess.run([str(program), str(key[0]), str(key[1]), str(p), str(i0)], capture_output=True,
                             text=True, timeout=60, check=True).stdout.split("\n")
        want = element_word(key, ref_idx, p).tolist()
        for name, line in zip(("element_word", "run_words<4>", "run_words<8>"), out):
            assert [int(x) for x in line.split()] == want, (name, purpose, i0)

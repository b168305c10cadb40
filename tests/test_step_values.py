"""The per-step values every backend receives (signopt.scalars.step_values): step counters and
Philox keys computed by the C++ helpers equal the Python statement (signopt.philox.derive_key)."""
from __future__ import annotations

import random

import pytest
import torch

from signopt import philox
from signopt.scalars import StepCounters
from optim_infos import backend_or_skip


def test_derive_keys_cpp_numpy_python_agree(monkeypatch):
    backend_or_skip("cpp")
    rng = random.Random(3)
    steps = [rng.randrange(0, 2**40) for _ in range(200)] + [0, 1, 2**32 - 1, 2**32, 2**62]
    indices = [rng.randrange(0, 2**40) for _ in range(200)] + [2**32 + 7, 0, 5, 2**32 - 1, 3]
    for seed in (0, 1, 2**32 - 1, 2**32, 2**64 - 1, 0x0123456789ABCDEF):
        ref = [k for t, i in zip(steps, indices) for k in philox.derive_key(seed, t, i)]
        assert philox.derive_keys(seed, steps, indices) == ref  # C++ (extension loaded)
        with monkeypatch.context() as m:
            m.setattr(philox, "loaded_op", lambda name: None)
            assert philox.derive_keys(seed, steps, indices) == ref  # NumPy
    with pytest.raises(ValueError, match="seed"):
        philox.derive_keys(2**64, steps, indices)


def test_step_counters_held_and_torch_agree():
    backend_or_skip("cpp")
    a = [torch.tensor(t, dtype=torch.int64) for t in (0, 5, 2**40)]
    b = [t.clone() for t in a]
    held = StepCounters(a)
    assert held._held is not None
    plain = StepCounters(b)
    plain._held = None
    for _ in range(3):
        assert held.advance() == plain.advance()
    held.retreat()
    assert [int(t) for t in a] == [2, 7, 2**40 + 2]
    with pytest.raises(RuntimeError, match="int64 CPU"):
        torch.classes.signopt.StepCounters([torch.zeros((), dtype=torch.int32)])

"""Checkpoints written by signopt 0.1.0 (state-dict schema 1) still load and continue exactly.

``tests/fixtures/schema1_checkpoints.pt`` was written by :func:`make_fixture` with the code of
commit b752096 (schema 1): per scenario, the parameters and the optimizer's ``state_dict``
after ``STEPS`` steps. The test replays each scenario from scratch with today's code, loads the
old state dict into a new optimizer over the saved parameters and checks that both continue
bit for bit (parameters and every state tensor) — so neither the loader nor the update may drift.
The fixture's runs drew random bits v1 (one Philox call per element, word ``purpose`` of it); the
replay draws them too (:func:`v1_element_word` in place of ``signopt.philox.element_word``), and
both continuations draw random bits v2, as a run resumed from a schema-1 state dict does
(``docs/numerics.md``).
Run this file as a script only when the schema changes on purpose, to record a new fixture.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

import signopt
from signopt import reference
from signopt.backends import torch_backend
from signopt.philox import MASK32, philox4x32

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "schema1_checkpoints.pt"
STEPS = 3
COMMON = dict(seed=1234, backend="torch")
FP8 = dict(state_dtype="fp8_e4m3", state_block=8, fp8_min_numel=0)

SCENARIOS: dict[str, Callable[[list], torch.optim.Optimizer]] = {
    "signsgd": lambda ps: signopt.SignSGD(ps, lr=1e-2, weight_decay=0.1, **COMMON),
    "signum_bf16": lambda ps: signopt.Signum(ps, lr=1e-2, momentum=0.8, state_dtype="bf16", **COMMON),
    "lion_fp8": lambda ps: signopt.Lion(ps, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.3, **FP8, **COMMON),
    "lion_kappa_huber": lambda ps: signopt.LionKappa(ps, lr=1e-2, kappa="huber", huber_delta=0.05, **COMMON),
    "stosign_row": lambda ps: signopt.StoSignSGD(ps, lr=1e-2, beta=0.7, envelope="row", **COMMON),
    "conversion_adamw_fp8": lambda ps: signopt.SignConversion(ps, lr=1e-2, base="adamw", state_rounding="stochastic",
                                                               **FP8, **COMMON),
    "wrapper_adam": lambda ps: signopt.SignConversionWrapper(torch.optim.Adam(ps, lr=1e-2), lr=1e-2,
                                                             envelope="block", envelope_block=4, seed=99,
                                                             backend="torch"),
}


def make_params() -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in ((6, 5), (7,), (3, 4, 2))]


def set_grads(params: list, t: int) -> None:
    gen = torch.Generator().manual_seed(100 + t)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def run(name: str, steps: int) -> tuple[list, torch.optim.Optimizer]:
    params = make_params()
    opt = SCENARIOS[name](params)
    for t in range(steps):
        set_grads(params, t)
        opt.step()
    return params, opt


def make_fixture() -> None:
    out = {}
    for name in SCENARIOS:
        params, opt = run(name, STEPS)
        out[name] = {"params": [p.detach().clone() for p in params], "state_dict": opt.state_dict()}
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(out, FIXTURE)


def v1_element_word(key: tuple[int, int], indices: torch.Tensor, purpose: int) -> torch.Tensor:
    """Random bits v1 (the code of the fixture): word ``purpose`` of the Philox call on counter
    ``(i mod 2**32, i >> 32, 0, 0)`` of element ``i``."""
    flat = indices.reshape(-1)
    zero = torch.zeros_like(flat)
    words = philox4x32(key[0], key[1], flat & MASK32, (flat >> 32) & MASK32, zero, zero)
    return words[purpose].reshape(indices.shape)


def _flat_state(opt: torch.optim.Optimizer) -> dict:
    sd = opt.state_dict()
    return {(k, name): v for k, st in sd["state"].items() for name, v in st.items() if torch.is_tensor(v)}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_schema1_checkpoint_loads_and_continues_exactly(name, monkeypatch):
    saved = torch.load(FIXTURE, weights_only=True)[name]
    with monkeypatch.context() as m:  # the old run's random bits (v1)
        for module in (reference, torch_backend):
            m.setattr(module, "element_word", v1_element_word)
        fresh_params, fresh = run(name, STEPS)
    for p, q in zip(fresh_params, saved["params"]):  # today's code replays the old run bit for bit
        assert torch.equal(p.detach(), q)
    params = [torch.nn.Parameter(q.clone()) for q in saved["params"]]
    loaded = SCENARIOS[name](params)
    loaded.load_state_dict(saved["state_dict"])
    for t in range(STEPS, STEPS + 2):
        set_grads(fresh_params, t)
        set_grads(params, t)
        fresh.step()
        loaded.step()
    for p, q in zip(fresh_params, params):
        assert torch.equal(p.detach(), q.detach())
    a, b = _flat_state(fresh), _flat_state(loaded)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


if __name__ == "__main__":
    make_fixture()
    print(f"wrote {FIXTURE}", file=sys.stderr)

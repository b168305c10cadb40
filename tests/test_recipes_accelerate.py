"""The accelerate recipe of docs/trainers.md: ``Accelerator.prepare`` on a signopt optimizer,
gradient accumulation stepping once per window (bit-identical to accumulating by hand), and
``save_state``/``load_state`` restoring the optimizer so that a resumed run ends bit-identical
to an uninterrupted one."""
from __future__ import annotations

import copy

import pytest
import torch

import signopt

accelerate = pytest.importorskip("accelerate", reason="the accelerate recipe needs accelerate (the rl extra)")

ACCUM = 2
OPTIMIZERS = [(signopt.Lion, dict(lr=1e-2, weight_decay=0.1)),
              (signopt.StoSignSGD, dict(lr=1e-2, seed=7, state_dtype="bf16"))]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def _batches(n: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i in range(start, start + n):
        gen = torch.Generator().manual_seed(100 + i)
        out.append((torch.randn(8, 16, generator=gen), torch.randn(8, 1, generator=gen)))
    return out


def _prepared(opt_cls, opt_kw):
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUM)
    model = _model()
    opt = opt_cls(model.parameters(), **opt_kw)
    model, opt = accelerator.prepare(model, opt)
    return accelerator, model, opt


def _train(accelerator, model, opt, batches) -> None:
    for x, y in batches:
        with accelerator.accumulate(model):
            accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
            opt.step()
            opt.zero_grad()


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("opt_cls,opt_kw", OPTIMIZERS)
def test_accumulation_steps_once_per_window(opt_cls, opt_kw) -> None:
    accelerator, model, opt = _prepared(opt_cls, opt_kw)
    assert isinstance(opt.optimizer, opt_cls)
    batches = _batches(4 * ACCUM)
    _train(accelerator, model, opt, batches)

    ref = _model()
    ref_opt = opt_cls(ref.parameters(), **opt_kw)
    for w in range(0, len(batches), ACCUM):
        for x, y in batches[w:w + ACCUM]:
            (torch.nn.functional.mse_loss(ref(x), y) / ACCUM).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("opt_cls,opt_kw", OPTIMIZERS)
def test_save_state_load_state_resumes_bit_identically(tmp_path, opt_cls, opt_kw) -> None:
    accelerator, model, opt = _prepared(opt_cls, opt_kw)
    _train(accelerator, model, opt, _batches(2 * ACCUM))
    accelerator.save_state(str(tmp_path / "ckpt"))
    saved = copy.deepcopy(opt.optimizer.state_dict())  # the live state keeps changing below
    _train(accelerator, model, opt, _batches(3 * ACCUM, start=100))
    final = _params(model)

    accelerator2, model2, opt2 = _prepared(opt_cls, opt_kw)
    accelerator2.load_state(str(tmp_path / "ckpt"))
    restored = opt2.optimizer.state_dict()
    assert restored["param_groups"] == saved["param_groups"]
    for k, st in saved["state"].items():
        for name, v in st.items():
            got = restored["state"][k][name]
            assert torch.equal(got, v) if isinstance(v, torch.Tensor) else got == v, (k, name)
    _train(accelerator2, model2, opt2, _batches(3 * ACCUM, start=100))
    for p, q in zip(model2.parameters(), final):
        assert torch.equal(p, q)

"""SignConversionWrapper: unbiasedness against the base direction, checkpoints, validation."""
from __future__ import annotations

import math

import pytest
import torch

import signopt
from optim_infos import through_checkpoint

LR = 2.0 ** -8


def _adamw_directions(g1: torch.Tensor, g2: torch.Tensor, base_lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """AdamW's directions d_t = -(dp_t)/lr for two steps (weight_decay=0, so d is p-free)."""
    q = torch.zeros_like(g1, requires_grad=True)
    opt = torch.optim.AdamW([q], lr=base_lr, weight_decay=0.0)
    out = []
    for g in (g1, g2):
        before = q.detach().clone()
        q.grad = g.clone()
        opt.step()
        out.append((before - q.detach()) / base_lr)
    return out[0], out[1]


def test_expected_step_is_minus_lr_d_over_b() -> None:
    """E[dp] = -lr*d/B with B the running envelope max(|d_1|, |d_2|) (6-sigma over all coords)."""
    n, draws, base_lr = 10, 20_000, 1e-3
    g1 = torch.linspace(-2.0, 2.0, n)
    g2 = torch.tensor([-1.0, 0.5, -0.2, 0.05, 1.0, -1.0, 0.3, -0.7, 0.0, 2.0])
    d1, d2 = _adamw_directions(g1, g2, base_lr)
    p = torch.zeros(draws, n, requires_grad=True)
    opt = signopt.SignConversionWrapper(torch.optim.AdamW([p], lr=base_lr, weight_decay=0.0),
                                        lr=LR, seed=123)
    p.grad = g1.expand(draws, n).clone()
    opt.step()
    p1 = p.detach().clone()
    p.grad = g2.expand(draws, n).clone()
    opt.step()
    B = torch.maximum(d1.abs(), d2.abs())
    G = opt.state[p]["G"]
    assert torch.allclose(G, B.expand(draws, n), rtol=1e-5)
    steps = (p1 - p.detach()) / LR  # S_B(d2) in {-1, +1}
    assert ((steps == 1) | (steps == -1) | ((steps == 0) & (B == 0))).all()
    mean = steps.double().mean(dim=0)
    r = (d2 / B).double()
    sd = (1 - r * r).clamp_min(0).sqrt()
    assert ((mean - r).abs() <= 6 * sd / math.sqrt(draws) + 1e-4).all(), (mean, r)
    assert r.abs().min() < 0.5  # the test is not trivially +-1


def test_state_dict_round_trip_with_bf16_params() -> None:
    """The fp32 envelope survives a checkpoint of a wrapper over bf16 params (torch's default
    load would round it through bf16)."""
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(8, 4, generator=gen).to(torch.bfloat16).requires_grad_()
    q = p.detach().clone().requires_grad_()
    opt = signopt.SignConversionWrapper(torch.optim.AdamW([p], lr=1e-3), lr=LR, seed=1)
    ref = signopt.SignConversionWrapper(torch.optim.AdamW([q], lr=1e-3), lr=LR, seed=1)
    grads = [torch.randn(8, 4, generator=gen).to(torch.bfloat16) for _ in range(6)]
    for g in grads[:3]:
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    sd = through_checkpoint(opt.state_dict())
    r = p.detach().clone().requires_grad_()
    fresh = signopt.SignConversionWrapper(torch.optim.AdamW([r], lr=1e-3), lr=LR, seed=99)
    fresh.load_state_dict(sd)
    assert fresh.state[r]["G"].dtype == torch.float32
    assert torch.equal(fresh.state[r]["G"], ref.state[q]["G"])
    for g in grads[3:]:
        r.grad, q.grad = g.clone(), g.clone()
        fresh.step()
        ref.step()
    assert torch.equal(r, q)
    assert torch.equal(fresh.state[r]["G"], ref.state[q]["G"])


def test_closure_that_creates_grads_still_sign_steps() -> None:
    """Regression: grads created inside the closure must be seen (the wrapper once ran the bare base)."""
    p = torch.zeros(16, requires_grad=True)
    opt = signopt.SignConversionWrapper(torch.optim.SGD([p], lr=0.1), lr=LR, seed=0)
    target = torch.linspace(-1, 1, 16)

    def closure():
        opt.zero_grad()
        loss = ((p - target) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert (p.detach().abs() == LR).sum() == 16 - int((target == 0).sum())
    assert opt.state[p]["step"] == 1


def test_add_param_group_reaches_the_base() -> None:
    p, q = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = signopt.SignConversionWrapper(torch.optim.SGD([p], lr=0.1), lr=LR, seed=0)
    opt.add_param_group({"params": [q], "lr": 0.05})
    assert len(opt.base.param_groups) == 2 and opt.base.param_groups[1]["lr"] == 0.05
    assert opt.param_groups[1]["lr"] == LR
    q.grad = torch.ones(2)
    opt.step()
    assert torch.equal(q.detach(), torch.full((2,), -LR))


def test_validation() -> None:
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="optimizer"):
        signopt.SignConversionWrapper([p])
    for kw, name in ((dict(envelope="cube"), "envelope"), (dict(envelope_decay=0.0), "envelope_decay"),
                     (dict(lr=-1.0), "lr"), (dict(envelope_block=0), "envelope_block"),
                     (dict(seed=2**64), "seed")):
        with pytest.raises(ValueError, match=name):
            signopt.SignConversionWrapper(torch.optim.SGD([p], lr=0.1), **kw)
    opt = signopt.SignConversionWrapper(torch.optim.SGD([p], lr=0.1), lr=LR, seed=0)
    opt.base.param_groups[0]["lr"] = 0.0
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert not p.detach().any() and not opt.state.get(p)

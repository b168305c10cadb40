"""Each optimizer trains small real problems; regression tests for bugs peers shipped."""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import signopt
from optim_infos import OptimInfo, OptimInput, cases, make_params, set_grads, snapshot

FACTORIES = {
    "SignSGD": lambda ps: signopt.SignSGD(ps, lr=3e-3),
    "Signum": lambda ps: signopt.Signum(ps, lr=3e-3, momentum=0.9),
    "Lion": lambda ps: signopt.Lion(ps, lr=3e-3, weight_decay=0.1),
    "Lion-cautious-bf16": lambda ps: signopt.Lion(ps, lr=3e-3, cautious=True, state_dtype="bf16"),
    "LionKappa-l2sq": lambda ps: signopt.LionKappa(ps, lr=0.3, betas=(0.9, 0.9), kappa="l2sq"),
    "LionKappa-huber": lambda ps: signopt.LionKappa(ps, lr=3e-3, kappa="huber", huber_delta=0.01),
    "LionKappa-row_l2": lambda ps: signopt.LionKappa(ps, lr=3e-2, kappa="row_l2"),
    "StoSignSGD": lambda ps: signopt.StoSignSGD(ps, lr=3e-3, seed=0),
    "StoSignSGD-row": lambda ps: signopt.StoSignSGD(ps, lr=1e-2, seed=0, envelope="row"),
    "SignConversion-adamw": lambda ps: signopt.SignConversion(ps, lr=3e-3, base="adamw", seed=0),
    "SignConversion-lion": lambda ps: signopt.SignConversion(ps, lr=3e-3, base="lion", seed=0),
    "Wrapper(AdamW)": lambda ps: signopt.SignConversionWrapper(torch.optim.AdamW(ps, lr=1e-3), lr=3e-3, seed=0),
}


def _data(seed: int = 0, n: int = 256, d: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    w = torch.randn(d, generator=gen)
    return x, w, gen


@pytest.mark.parametrize("name", list(FACTORIES))
def test_logistic_regression(name: str) -> None:
    x, w_true, _ = _data()
    y = (x @ w_true > 0).float()
    model = nn.Linear(10, 1)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = FACTORIES[name](model.parameters())
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn(model(x).squeeze(1), y)
        loss.backward()
        opt.step()
    final = float(loss_fn(model(x).squeeze(1), y))
    assert final < 0.35, f"{name}: loss {final:.3f} (start {math.log(2):.3f})"


@pytest.mark.parametrize("name", list(FACTORIES))
def test_small_mlp_regression(name: str) -> None:
    x, w_true, gen = _data(1, n=256, d=8)
    y = torch.sin(x @ w_true[:8] / 2).unsqueeze(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = FACTORIES[name](model.parameters())
    loss_fn = nn.MSELoss()
    start = float(loss_fn(model(x), y))
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    final = float(loss_fn(model(x), y))
    assert final < 0.25 * start, f"{name}: loss {final:.4f} from {start:.4f}"


# ------------------------------------------------------------- peer regressions
def test_signum_momentum_persists_across_steps() -> None:
    """pytorch-optimizer re-zeroed Signum's buffer each step (silently signSGD)."""
    p = torch.zeros(2, requires_grad=True)
    opt = signopt.Signum([p], lr=0.25, momentum=0.9)
    p.grad = torch.tensor([1.0, -1.0])
    opt.step()
    p.grad = torch.tensor([-0.5, 0.5])  # against the momentum, but smaller
    opt.step()
    m = opt.state[p]["m"]
    b, omb = torch.tensor(0.9), torch.tensor(1 - 0.9)
    m1 = torch.tensor([1.0, -1.0]) * omb
    m2 = m1 * b + torch.tensor([-0.5, 0.5]) * omb
    assert torch.equal(m, m2)  # ~[0.04, -0.04]: the momentum still points the old way
    assert torch.equal(p.detach(), torch.tensor([-0.5, 0.5]))  # two steps the same way
    # signSGD would have stepped back
    q = torch.zeros(2, requires_grad=True)
    sgd = signopt.SignSGD([q], lr=0.25)
    for g in ([1.0, -1.0], [-0.5, 0.5]):
        q.grad = torch.tensor(g)
        sgd.step()
    assert torch.equal(q.detach(), torch.zeros(2))


LR, WD = 2.0 ** -4, 2.0 ** -2  # dyadic: every expected value below is exact


@pytest.mark.parametrize("cls", [signopt.SignSGD, signopt.Signum, signopt.Lion])
def test_weight_decay_modes_exact(cls) -> None:
    """Each wd mode applied exactly once per step, with the documented formula."""
    p0 = torch.tensor([2.0, -1.0])
    g = torch.tensor([-0.25, 0.1])

    def one_step(mode: str, lr_now: float) -> Tensor:
        p = p0.clone().requires_grad_()
        opt = cls([p], lr=LR, weight_decay=WD, wd_mode=mode)
        opt.param_groups[0]["lr"] = lr_now  # as a scheduler would
        p.grad = g.clone()
        opt.step()
        return p.detach()

    sign_g = torch.sign(g)  # [-1, +1]: without l2 the step goes against p's sign
    # decoupled: p*(1 - lr*wd) - lr*sign(g)
    assert torch.equal(one_step("decoupled", LR), p0 * (1 - LR * WD) - LR * sign_g)
    assert torch.equal(one_step("decoupled", LR / 2), p0 * (1 - LR / 2 * WD) - LR / 2 * sign_g)
    # independent: p*(1 - wd*lr/lr0); with lr halved by a schedule the decay is 1 - wd/2
    assert torch.equal(one_step("independent", LR), p0 * (1 - WD) - LR * sign_g)
    assert torch.equal(one_step("independent", LR / 2), p0 * (1 - WD / 2) - LR / 2 * sign_g)
    # l2: g + wd*p = [0.25, -0.15]: the step's sign flips, no multiplicative decay
    assert torch.equal(one_step("l2", LR), p0 - LR * torch.sign(g + WD * p0))
    # with weight_decay=0 every mode is the plain step
    for mode in ("decoupled", "independent", "l2"):
        p = p0.clone().requires_grad_()
        opt = cls([p], lr=LR, weight_decay=0.0, wd_mode=mode)
        p.grad = g.clone()
        opt.step()
        assert torch.equal(p.detach(), p0 - LR * sign_g)


def test_l2_weight_decay_feeds_the_momentum() -> None:
    p0 = torch.tensor([2.0, -1.0])
    g = torch.tensor([-0.25, 0.1])
    p = p0.clone().requires_grad_()
    opt = signopt.Signum([p], lr=LR, momentum=0.5, weight_decay=WD, wd_mode="l2")
    p.grad = g.clone()
    opt.step()
    assert torch.equal(opt.state[p]["m"], (g + WD * p0) * 0.5)


@pytest.mark.parametrize("info,inp", cases(signopt_only=True))
def test_nonfinite_gradient_never_becomes_a_step(info: OptimInfo, inp: OptimInput) -> None:
    """NaN/inf gradient elements keep their param and per-element state; the rest still steps."""
    params = make_params()
    opt = info.ctor(params, **inp.make())
    set_grads(params, 0)
    opt.step()
    set_grads(params, 1)
    bad_idx = [0, 7, 11]
    for k, val in zip(bad_idx, (float("nan"), float("inf"), -float("inf"))):
        params[0].grad.view(-1)[k] = val
    before = snapshot(opt, params)
    opt.step()
    after = snapshot(opt, params)
    assert opt.nonfinite_count() == 3
    flat_b, flat_a = before["params"][0].view(-1), after["params"][0].view(-1)
    assert torch.equal(flat_a[bad_idx], flat_b[bad_idx])
    good = torch.ones(flat_a.numel(), dtype=torch.bool)
    good[bad_idx] = False
    assert not torch.equal(flat_a[good], flat_b[good])
    assert torch.isfinite(flat_a).all()
    for name, sb in before["state"][0].items():
        sa = after["state"][0][name]
        assert torch.isfinite(sa.float()).all(), name
        if isinstance(sb, Tensor) and sb.shape == params[0].shape:  # per-element state
            assert torch.equal(sa.view(-1)[bad_idx], sb.view(-1)[bad_idx]), name
    # the next finite step is counted as clean
    set_grads(params, 2)
    opt.step()
    assert opt.nonfinite_count() == 0

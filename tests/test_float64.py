"""float64 (and complex128) parameters: updated in fp64 by the torch backend, refused at
construction by the kernel backends. Expected values are written out here in fp64 (closed
forms of each rule, with the fp32-rounded scalars and fp32 state the numerics contract states)."""
from __future__ import annotations

import struct

import pytest
import torch

import signopt


def f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def params64(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in ((5, 3), (4,))]


def grads64(t: int, shapes) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(50 + t)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]


def run(opt, params, steps: int) -> None:
    for t in range(steps):
        for p, g in zip(params, grads64(t, [p.shape for p in params])):
            p.grad = g
        opt.step()


def test_lion_fp64_is_the_fp64_closed_form():
    lr, wd, b1, b2 = 0.01, 0.3, 0.8, 0.95
    params = params64()
    expect = [p.detach().clone() for p in params]
    run(signopt.Lion(params, lr=lr, betas=(b1, b2), weight_decay=wd, seed=0), params, 4)
    m = [torch.zeros_like(p) for p in expect]
    for t in range(4):
        for i, g in enumerate(grads64(t, [p.shape for p in expect])):
            c = m[i] * f32(b1) + g * f32(1 - b1)
            expect[i] = expect[i] * f32(1 - lr * wd) - f32(lr) * torch.sign(c)
            m[i] = (m[i] * f32(b2) + g * f32(1 - b2)).float().double()  # fp32 state
    for p, e in zip(params, expect):
        assert p.dtype == torch.float64 and torch.equal(p.detach(), e)
    # the parameters carry fp64 precision: most are not fp32 values
    assert sum(int((p.detach() != p.detach().float().double()).sum()) for p in params) > 10


def test_signum_fp64_with_bf16_state_rounds_state_through_fp32():
    lr, beta = 0.02, 0.7
    params = params64(1)
    expect = [p.detach().clone() for p in params]
    run(signopt.Signum(params, lr=lr, momentum=beta, state_dtype="bf16", seed=0), params, 3)
    m = [torch.zeros_like(p) for p in expect]
    for t in range(3):
        for i, g in enumerate(grads64(t, [p.shape for p in expect])):
            new = m[i] * f32(beta) + g * f32(1 - beta)
            expect[i] = expect[i] - f32(lr) * torch.sign(new)
            m[i] = new.float().bfloat16().double()
    assert all(torch.equal(p.detach(), e) for p, e in zip(params, expect))


def test_stosignsgd_fp64_steps_by_exactly_lr_and_starts_as_signum():
    lr = 0.05
    params = params64(2)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = signopt.StoSignSGD(params, lr=lr, beta=0.6, seed=3)
    run(opt, params, 1)
    run(signopt.Signum(twin, lr=lr, momentum=0.6, seed=3), twin, 1)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(params, twin))
    for t in range(1, 4):  # every step moves each element by -lr*u, u = +-1, in fp64
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, grads64(t, [p.shape for p in params])):
            p.grad = g
        opt.step()
        moves = []
        for p, b in zip(params, before):
            down, up = p.detach() == b - f32(lr), p.detach() == b + f32(lr)
            assert bool((down | up).all())
            moves.append(down.reshape(-1))
        assert 0 < int(torch.cat(moves).sum()) < 19  # both directions occur among the 19 elements


def test_complex128_is_its_fp64_real_view():
    gen = torch.Generator().manual_seed(4)
    z = torch.nn.Parameter(torch.randn(3, 2, generator=gen, dtype=torch.complex128))
    r = torch.nn.Parameter(torch.view_as_real(z.detach()).clone())
    oz = signopt.Lion([z], lr=0.01, weight_decay=0.1, seed=0)
    orr = signopt.Lion([r], lr=0.01, weight_decay=0.1, seed=0)
    for t in range(3):
        g = torch.randn(3, 2, generator=gen, dtype=torch.complex128)
        z.grad, r.grad = g, torch.view_as_real(g).clone()
        oz.step(), orr.step()
    assert torch.equal(torch.view_as_real(z.detach()), r.detach())


def test_fp64_state_dict_round_trip_continues_exactly():
    params = params64(5)
    opt = signopt.SignConversion(params, lr=0.01, base="adamw", seed=9)
    run(opt, params, 2)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    loaded = signopt.SignConversion(twin, lr=0.01, base="adamw", seed=9)
    loaded.load_state_dict(opt.state_dict())
    for p, q, g in zip(params, twin, grads64(9, [p.shape for p in params])):
        p.grad, q.grad = g, g.clone()
    opt.step(), loaded.step()
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(params, twin))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_kernel_backends_refuse_fp64_at_construction(backend):
    ps = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    with pytest.raises(ValueError, match=rf"backend='{backend}'.*params\[1\] has dtype torch\.float64"):
        signopt.Lion(ps, backend=backend)


def test_auto_runs_fp64_on_the_torch_backend():
    assert signopt.Lion(params64(), backend="auto").backends == ["torch"]

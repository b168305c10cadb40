"""The torch.optim contract, run over every optimizer and option set in ``optim_infos``."""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import signopt
from optim_infos import (LR, OPTIM_INFOS, OptimInfo, OptimInput, assert_snapshot_equal, build, cases, grad_for,
                         info_cases, make_params, run, set_grads, snapshot, through_checkpoint)

STEPS = 3


def _clone_params(params: list[Tensor]) -> list[Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


def _override(info: OptimInfo, inp: OptimInput) -> dict:
    """Per-group hyperparameters for the second group (tensor lr stays a tensor)."""
    ov = dict(info.group_override)
    if isinstance(inp.kwargs.get("lr"), Tensor) and "lr" in ov:
        ov["lr"] = torch.tensor(ov["lr"])
    return ov


# ------------------------------------------------------------------ param groups
@pytest.mark.parametrize("info,inp", cases("param_groups"))
def test_per_group_hyperparameters(info: OptimInfo, inp: OptimInput) -> None:
    """Group B of a mixed optimizer steps exactly as in an optimizer using B's settings everywhere."""
    ov = _override(info, inp)
    base = make_params()
    mixed_p, uni1_p, uni2_p = (_clone_params(base) for _ in range(3))

    def groups(ps, second):
        return [{"params": ps[:2]}, {"params": ps[2:], **second}]

    mixed = build(info, groups(mixed_p, ov), inp)
    uni1 = build(info, groups(uni1_p, {}), inp)
    uni2 = build(info, [{"params": uni2_p[:2], **ov}, {"params": uni2_p[2:], **_override(info, inp)}], inp)
    for opt, ps in ((mixed, mixed_p), (uni1, uni1_p), (uni2, uni2_p)):
        run(opt, ps, range(STEPS))
    for a, b in zip(mixed_p[:2], uni1_p[:2]):
        assert torch.equal(a, b)
    for a, b, c in zip(mixed_p[2:], uni2_p[2:], uni1_p[2:]):
        assert torch.equal(a, b)
        assert not torch.equal(a, c), "the group override had no effect"


@pytest.mark.parametrize("info,inp", cases("add_param_group"))
def test_add_param_group(info: OptimInfo, inp: OptimInput) -> None:
    """Adding a group later equals having it from the start with no gradient until then."""
    ov = _override(info, inp)
    base = make_params()
    late_p, early_p = _clone_params(base), _clone_params(base)
    late = build(info, [{"params": late_p[:2]}], inp)
    set_grads(late_p[:2], 0)
    late.step()
    late.add_param_group({"params": late_p[2:], **_override(info, inp)})
    early = build(info, [{"params": early_p[:2]}, {"params": early_p[2:], **ov}], inp)
    set_grads(early_p[:2], 0)
    early.step()
    run(late, late_p, range(1, STEPS + 1))
    run(early, early_p, range(1, STEPS + 1))
    assert len(late.param_groups) == 2
    assert_snapshot_equal(snapshot(late, late_p), snapshot(early, early_p))
    if info.signopt_options:
        assert len(late.backends) == 2 and late.last_step_backends == late.backends


# ------------------------------------------------------------------- validation
ERROR_CASES = [pytest.param(info, err, id=f"{info.name}-{err.name}-{i}")
               for info in OPTIM_INFOS for i, err in enumerate(info.errors)]


@pytest.mark.parametrize("info,err", ERROR_CASES)
def test_invalid_option_raises_naming_it(info: OptimInfo, err) -> None:
    with pytest.raises(ValueError, match=err.regex):
        info.ctor(make_params(), **{"lr": LR, **err.kwargs})


# group options (the wrapper's options and ``backend`` are constructor-wide, not per group)
GROUP_ERROR_CASES = [c for c in ERROR_CASES
                     if c.values[0].signopt_options and "backend" not in c.values[1].kwargs]


@pytest.mark.parametrize("info,err", GROUP_ERROR_CASES)
def test_failing_add_param_group_changes_nothing(info: OptimInfo, err) -> None:
    params = make_params()
    opt = info.ctor(params[:2], lr=LR, **({"seed": 1} if info.stochastic else {}))
    run(opt, params[:2], range(2))
    before = snapshot(opt, params)
    n_groups, backends = len(opt.param_groups), list(opt.backends)
    with pytest.raises(ValueError, match=err.regex):
        opt.add_param_group({"params": params[2:], **err.kwargs})
    assert len(opt.param_groups) == n_groups and opt.backends == backends
    assert_snapshot_equal(before, snapshot(opt, params))
    run(opt, params[:2], [2])  # still usable


@pytest.mark.parametrize("info", info_cases())
def test_non_floating_params_rejected(info: OptimInfo) -> None:
    with pytest.raises(ValueError, match="params"):
        info.ctor([torch.zeros(3, dtype=torch.int64)], lr=LR)


@pytest.mark.parametrize("info,inp", cases("sparse"))
def test_sparse_grad_in_later_group_changes_nothing(info: OptimInfo, inp: OptimInput) -> None:
    """A step that fails on a sparse gradient in group 2 leaves group 1 (and everything) untouched."""
    params = make_params()
    opt = build(info, [{"params": params[:2]}, {"params": params[2:]}], inp)
    run(opt, params, range(2))
    set_grads(params, 2)
    dense = params[2].grad
    params[2].grad = dense.to_sparse()
    before = snapshot(opt, params)
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert_snapshot_equal(before, snapshot(opt, params))


@pytest.mark.parametrize("info,inp", cases(signopt_only=True))
def test_invalid_group_value_at_step_changes_nothing(info: OptimInfo, inp: OptimInput) -> None:
    """A hyperparameter made invalid after construction fails the step before any write."""
    params = make_params()
    opt = build(info, [{"params": params[:2]}, {"params": params[2:]}], inp)
    run(opt, params, range(2))
    opt.param_groups[1]["weight_decay"] = -1.0
    set_grads(params, 2)
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match="weight_decay"):
        opt.step()
    assert_snapshot_equal(before, snapshot(opt, params))


@pytest.mark.parametrize("info", info_cases(signopt_only=True))
def test_failing_load_state_dict_changes_nothing(info: OptimInfo) -> None:
    inp = info.inputs[0]
    params = make_params()
    opt = build(info, params, inp)
    run(opt, params, range(2))
    good = opt.state_dict()
    before = snapshot(opt, params)
    groups_before = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    bad_schema = {k: v for k, v in good.items() if k != "signopt_schema"}  # as a foreign optimizer's:
    bad_schema["param_groups"] = [{k: v for k, v in g.items() if k != "signopt_schema"}
                                  for g in good["param_groups"]]  # groups carry it too (for DCP)
    bad_group = {**good, "param_groups": [{**good["param_groups"][0], "wd_mode": "bogus"}]}
    bad_count = {**good, "param_groups": good["param_groups"] * 2}
    for bad, word in ((bad_schema, "schema"), (bad_group, "wd_mode"), (bad_count, "groups")):
        with pytest.raises(ValueError, match=word):
            opt.load_state_dict(bad)
        assert_snapshot_equal(before, snapshot(opt, params))
        assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before


# ------------------------------------------------------------------- state dict
@pytest.mark.parametrize("info,inp", cases("state_dict"))
def test_state_dict_resume_is_bit_identical(info: OptimInfo, inp: OptimInput) -> None:
    """save -> torch.load(weights_only=True) -> fresh optimizer -> continue == uninterrupted."""
    params = make_params()
    ref_p = _clone_params(params)
    ref = build(info, ref_p, inp)
    run(ref, ref_p, range(2 * STEPS))

    opt = build(info, params, inp)
    run(opt, params, range(STEPS))
    sd = through_checkpoint(opt.state_dict())
    if info.signopt_options:
        assert sd["signopt_schema"] == signopt.optimizer.SCHEMA_VERSION
    fresh_p = _clone_params(params)
    torch.manual_seed(12345)  # a fresh default seed differs: the loaded one must win
    override = {"seed": 999} if info.stochastic else {}
    fresh = build(info, fresh_p, inp, **override)
    fresh.load_state_dict(sd)
    run(fresh, fresh_p, range(STEPS, 2 * STEPS))
    assert_snapshot_equal(snapshot(ref, ref_p), snapshot(fresh, fresh_p))


@pytest.mark.parametrize("info", info_cases("lowp"))
@pytest.mark.parametrize("param_dtype,state_dtype",
                         [(torch.float32, "bf16"), (torch.bfloat16, "fp32"), (torch.float16, "bf16")])
def test_state_format_survives_load(info: OptimInfo, param_dtype: torch.dtype, state_dtype: str) -> None:
    """State keeps its storage dtype through a load (torch's default would cast it to the param dtype)."""
    if info.name == "SignSGD":
        return  # keeps no state tensors
    inp = info.inputs[0]
    params = make_params(dtype=param_dtype)
    opt = build(info, params, inp, state_dtype=state_dtype)
    run(opt, params, range(STEPS))
    before = snapshot(opt, params)
    fresh = build(info, _clone_params(params), inp, state_dtype=state_dtype)
    fresh.load_state_dict(through_checkpoint(opt.state_dict()))
    after = snapshot(fresh, [p for p in fresh.param_groups[0]["params"]])
    assert_snapshot_equal(before, after)
    want = {"fp32": torch.float32, "bf16": torch.bfloat16}[state_dtype]
    assert after["state"][0]["m" if "m" in after["state"][0] else "G"].dtype == want


@pytest.mark.parametrize("info", info_cases("lowp"))
def test_load_converts_into_the_built_state_format(info: OptimInfo) -> None:
    """A bf16-state checkpoint loads into an fp32-state optimizer as the same values in fp32."""
    if info.name == "SignSGD":
        return
    inp = info.inputs[0]
    params = make_params()
    opt = build(info, params, inp, state_dtype="bf16")
    run(opt, params, range(STEPS))
    fresh = build(info, _clone_params(params), inp, state_dtype="fp32")
    fresh.load_state_dict(through_checkpoint(opt.state_dict()))
    assert fresh.param_groups[0]["state_dtype"] == "fp32"
    for p_old, p_new in zip(params, fresh.param_groups[0]["params"]):
        for k, v in opt.state[p_old].items():
            w = fresh.state[p_new][k]
            if k == "step":
                assert torch.equal(v, w)
            else:
                assert w.dtype == torch.float32 and torch.equal(v.float(), w)


# ------------------------------------------------------------ closures, zero_grad
def _loss(params: list[Tensor], t: int) -> Tensor:
    """A smooth loss whose gradient is ``c_t + p`` (c_t fixed per step)."""
    return sum(((p * grad_for(p, t, i)).real.sum() + 0.5 * (p.abs() ** 2).sum()).float()
               for i, p in enumerate(params))


@pytest.mark.parametrize("info,inp", cases("closure"))
def test_closure(info: OptimInfo, inp: OptimInput) -> None:
    params = make_params()
    twin = _clone_params(params)
    opt, opt2 = build(info, params, inp), build(info, twin, inp)
    for t in range(STEPS):
        def closure(t=t):
            opt.zero_grad()
            loss = _loss(params, t)
            loss.backward()
            return loss

        loss = opt.step(closure)
        opt2.zero_grad()
        loss2 = _loss(twin, t)
        loss2.backward()
        opt2.step()
        assert torch.equal(loss, loss2)
    assert_snapshot_equal(snapshot(opt, params), snapshot(opt2, twin))


@pytest.mark.parametrize("info", info_cases())
def test_zero_grad(info: OptimInfo) -> None:
    params = make_params()
    opt = build(info, params, info.inputs[0])
    set_grads(params, 0)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("info,inp", cases("grad_none"))
def test_params_without_grad_are_skipped(info: OptimInfo, inp: OptimInput) -> None:
    params = make_params()
    opt = build(info, params, inp)
    run(opt, params, [0])
    for t in range(1, STEPS + 1):
        set_grads(params, t)
        params[1].grad = None
        before = snapshot(opt, params)
        opt.step()
        after = snapshot(opt, params)
        assert torch.equal(before["params"][1], after["params"][1])
        assert before["state"][1].keys() == after["state"][1].keys()
        for k in before["state"][1]:
            assert torch.equal(before["state"][1][k], after["state"][1][k])
        assert not torch.equal(before["params"][0], after["params"][0])
    # a parameter that never had a gradient gets no state
    q = make_params([(4,)], seed=5)[0]
    opt.add_param_group({"params": [q]})
    run(opt, params, [9])
    assert not opt.state.get(q)


# ----------------------------------------------------------- dtypes and layouts
@pytest.mark.parametrize("info,inp", cases("complex"))
def test_complex_params_as_real_views(info: OptimInfo, inp: OptimInput) -> None:
    gen = torch.Generator().manual_seed(3)
    c = torch.randn(4, 3, dtype=torch.complex64, generator=gen).requires_grad_()
    r = torch.randn(5, generator=gen).requires_grad_()
    twin = [torch.view_as_real(c.detach()).clone().requires_grad_(), r.detach().clone().requires_grad_()]
    opt, opt2 = build(info, [c, r], inp), build(info, twin, inp)
    run(opt, [c, r], range(STEPS))
    run(opt2, twin, range(STEPS))
    a = snapshot(opt, [c, r])
    a["params"][0] = torch.view_as_real(a["params"][0])
    assert_snapshot_equal(a, snapshot(opt2, twin))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("info,inp", cases("lowp"))
def test_low_precision_params_use_fp32_math(info: OptimInfo, inp: OptimInput, dtype: torch.dtype) -> None:
    """Each step equals the fp32 step from the same values, rounded once to the param dtype."""
    params = make_params(dtype=dtype)
    ref_p = [p.detach().float().requires_grad_() for p in params]
    opt, ref = build(info, params, inp), build(info, ref_p, inp)
    for t in range(STEPS):
        set_grads(params, t)
        for p, q in zip(params, ref_p):
            q.data.copy_(p.detach().float())
            q.grad = p.grad.float()
        opt.step()
        ref.step()
        for p, q in zip(params, ref_p):
            assert p.dtype == dtype
            assert torch.equal(p, q.detach().to(dtype))
        for p, q in zip(params, ref_p):
            for k, v in opt.state[p].items():
                assert _state_equal(v, ref.state[q][k]), k


def _state_equal(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("info,inp", cases("noncontiguous"))
def test_noncontiguous_params(info: OptimInfo, inp: OptimInput) -> None:
    base = make_params([(5, 6), (4, 8)], seed=2)
    nc = [p.detach().clone().t().requires_grad_() for p in base]  # shapes (6,5), (8,4)
    assert not any(p.is_contiguous() for p in nc)
    cont = [p.detach().contiguous().requires_grad_() for p in nc]
    opt, opt2 = build(info, nc, inp), build(info, cont, inp)
    for t in range(STEPS):
        set_grads(cont, t)
        for p, q in zip(nc, cont):
            p.grad = q.grad.t().contiguous().t()  # same values, non-contiguous layout
            assert not p.grad.is_contiguous()
        opt.step()
        opt2.step()
    assert_snapshot_equal(snapshot(opt, nc), snapshot(opt2, cont))


@pytest.mark.parametrize("info,inp", cases("zero_size"))
def test_zero_size_and_zero_dim_params(info: OptimInfo, inp: OptimInput) -> None:
    """A 0-dim param steps like its 1-element twin; a zero-size param is accepted and unchanged."""
    gen = torch.Generator().manual_seed(4)
    z, s, v = torch.empty(0, 3), torch.randn((), generator=gen), torch.randn(4, generator=gen)
    a = [t.clone().requires_grad_() for t in (z, s, v)]
    b = [z.clone().requires_grad_(), s.reshape(1).clone().requires_grad_(), v.clone().requires_grad_()]
    opt, opt2 = build(info, a, inp), build(info, b, inp)
    for t in range(STEPS):
        set_grads(a, t)
        for x, y in zip(a, b):
            y.grad = x.grad.reshape(y.shape).clone()
        opt.step()
        opt2.step()
    assert a[0].shape == (0, 3)
    assert torch.equal(a[1].reshape(1), b[1]) and not torch.equal(a[1], s)
    assert torch.equal(a[2], b[2])
    for k, val in opt.state.get(a[1], {}).items():
        assert torch.equal(val.reshape(-1), opt2.state[b[1]][k].reshape(-1)), k


@pytest.mark.parametrize("info,inp", cases("tied"))
def test_tied_params(info: OptimInfo, inp: OptimInput) -> None:
    """A weight shared by two modules is one parameter: one update from the summed gradient."""
    torch.manual_seed(0)
    emb = nn.Embedding(8, 4)
    head = nn.Linear(4, 8, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    assert len(list(model.parameters())) == 1
    w2 = emb.weight.detach().clone().requires_grad_()
    opt, opt2 = build(info, model.parameters(), inp), build(info, [w2], inp)
    x = torch.tensor([1, 3, 5, 7])
    for t in range(STEPS):
        opt.zero_grad()
        opt2.zero_grad()
        target = grad_for(torch.empty(4, 8), t, 0)
        (model(x) * target).sum().backward()
        (nn.functional.linear(nn.functional.embedding(x, w2), w2) * target).sum().backward()
        assert torch.equal(emb.weight.grad, w2.grad)
        opt.step()
        opt2.step()
    assert torch.equal(emb.weight, w2)


@pytest.mark.parametrize("info,inp", cases("named"))
def test_named_parameters(info: OptimInfo, inp: OptimInput) -> None:
    params = make_params()
    names = [f"layer{i}.weight" for i in range(len(params))]
    ref_p = _clone_params(params)
    ref = build(info, list(zip(names, ref_p)), inp)
    run(ref, ref_p, range(2 * STEPS))
    opt = build(info, list(zip(names, params)), inp)
    run(opt, params, range(STEPS))
    sd = through_checkpoint(opt.state_dict())
    assert sd["param_groups"][0]["param_names"] == names
    fresh_p = _clone_params(params)
    fresh = build(info, list(zip(names, fresh_p)), inp)
    fresh.load_state_dict(sd)
    run(fresh, fresh_p, range(STEPS, 2 * STEPS))
    assert_snapshot_equal(snapshot(ref, ref_p), snapshot(fresh, fresh_p))


# ------------------------------------------------------------------------ hooks
@pytest.mark.parametrize("info", info_cases("hooks"))
def test_step_hooks(info: OptimInfo) -> None:
    params = make_params()
    opt = build(info, params, info.inputs[0])
    seen = []

    def pre(o, args, kwargs):
        assert o is opt
        seen.append(("pre", params[0].detach().clone()))

    def post(o, args, kwargs):
        seen.append(("post", params[0].detach().clone()))

    h1, h2 = opt.register_step_pre_hook(pre), opt.register_step_post_hook(post)
    start = params[0].detach().clone()
    run(opt, params, [0])
    assert [s[0] for s in seen] == ["pre", "post"]
    assert torch.equal(seen[0][1], start) and torch.equal(seen[1][1], params[0])
    assert not torch.equal(start, params[0])
    h1.remove()
    h2.remove()
    run(opt, params, [1])
    assert len(seen) == 2


# -------------------------------------------------------------------- GradScaler
@pytest.mark.parametrize("info,inp", cases("grad_scaler"))
def test_grad_scaler(info: OptimInfo, inp: OptimInput) -> None:
    """Scaled loss == unscaled step; an inf gradient makes the step a no-op (params and state)."""
    params = make_params()
    twin = _clone_params(params)
    opt, opt2 = build(info, params, inp), build(info, twin, inp)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=1000)
    for t in range(STEPS):
        opt.zero_grad()
        scaler.scale(_loss(params, t)).backward()
        if t == 1:
            scaler.unscale_(opt)  # the explicit-unscale path
        scaler.step(opt)
        scaler.update()
        opt2.zero_grad()
        _loss(twin, t).backward()
        opt2.step()
    assert scaler.get_scale() == 2.0 ** 12
    assert_snapshot_equal(snapshot(opt, params), snapshot(opt2, twin))
    # an inf gradient anywhere: the whole step changes nothing
    opt.zero_grad()
    scaler.scale(_loss(params, STEPS)).backward()
    params[2].grad.view(-1)[3] = float("inf")
    before = snapshot(opt, params)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0 ** 12
    assert_snapshot_equal(before, snapshot(opt, params))


# -------------------------------------------------------------- tensor lr, compile
def _assert_close_ulps(a: Tensor, b: Tensor, ulps: int) -> None:
    """|a - b| <= ulps * ulp(max(|a|, |b|)) elementwise."""
    big = torch.maximum(a.abs(), b.abs())
    ulp = torch.nextafter(big, torch.full_like(big, math.inf)) - big
    assert ((a - b).abs() <= ulps * ulp).all(), (a - b).abs().max()


TENSOR_LR_CASES = [c for c in cases("tensor_lr", signopt_only=True)
                   if isinstance(c.values[1].kwargs["lr"], Tensor)]


@pytest.mark.parametrize("sched", ["step", "lambda"])
@pytest.mark.parametrize("info,inp", TENSOR_LR_CASES)
def test_tensor_lr_with_scheduler(info: OptimInfo, inp: OptimInput, sched: str) -> None:
    """Tensor lr under a scheduler == float lr: bitwise with wd=0, within 1 ulp/step with wd>0."""
    params = make_params()
    twin = _clone_params(params)
    opt = build(info, params, inp)
    opt2 = build(info, twin, inp, lr=float(inp.kwargs["lr"]))
    assert isinstance(opt.param_groups[0]["lr"], Tensor)

    def make_sched(o):
        if sched == "step":
            return torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)
        return torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0 / (1 + 3 * e))

    s1, s2 = make_sched(opt), make_sched(opt2)
    steps = 4
    for t in range(steps):
        set_grads(params, t)
        set_grads(twin, t)
        # the float run uses exactly the tensor's value (schedulers compute a tensor lr in fp32)
        opt2.param_groups[0]["lr"] = float(opt.param_groups[0]["lr"])
        opt.step()
        opt2.step()
        s1.step()
        s2.step()
        assert isinstance(opt.param_groups[0]["lr"], Tensor)
        assert float(opt.param_groups[0]["lr"]) == pytest.approx(opt2.param_groups[0]["lr"], rel=1e-6)
    exact = inp.kwargs.get("weight_decay", 0.0) == 0.0 or inp.kwargs.get("wd_mode") == "l2"
    if exact:
        assert_snapshot_equal(snapshot(opt, params), snapshot(opt2, twin))
    else:
        for a, b in zip(params, twin):
            _assert_close_ulps(a.detach(), b.detach(), steps)


def _compile_counter():
    from torch._dynamo.testing import CompileCounterWithBackend

    return CompileCounterWithBackend("inductor")


@pytest.mark.parametrize("cls", [signopt.Lion, signopt.Signum])
def test_compiled_step_matches_eager_and_lr_change_does_not_recompile(cls) -> None:
    torch._dynamo.reset()
    params = make_params([(6, 5), (5,)])
    twin = _clone_params(params)
    kw = dict(lr=torch.tensor(LR), weight_decay=0.5)
    opt, opt2 = cls(params, **kw), cls(twin, **kw)
    counter = _compile_counter()
    step = torch.compile(opt.step, backend=counter)
    set_grads(params, 0)
    set_grads(twin, 0)
    for t in range(4):
        # gradients written in place (as backward() accumulates after zero_grad(set_to_none=False)):
        # a new grad object is a new guard input; this test isolates lr changes
        for ps in (params, twin):
            for i, p in enumerate(ps):
                p.grad.copy_(grad_for(p, t, i))
        step()
        opt2.step()
        assert_snapshot_equal(snapshot(opt, params), snapshot(opt2, twin))
        if t == 1:
            frames = counter.frame_count
        for o in (opt, opt2):
            o.param_groups[0]["lr"].fill_(LR / (t + 2))
    assert frames >= 1
    assert counter.frame_count == frames, "changing the tensor lr recompiled opt.step"


# --------------------------------------------------------------------- backends
@pytest.mark.parametrize("info", info_cases(signopt_only=True))
def test_backend_reported(info: OptimInfo) -> None:
    params = make_params()
    opt = build(info, [{"params": params[:1]}, {"params": params[1:]}], info.inputs[0], backend="torch")
    assert opt.backends == ["torch", "torch"]
    run(opt, params, [0])
    assert opt.last_step_backends == ["torch", "torch"]
    auto = build(info, params, info.inputs[0])
    assert auto.backends[0] in ("torch", "cpp", "triton")
    run(auto, params, [1])
    assert auto.last_step_backends == auto.backends


@pytest.mark.parametrize("name", ["cpp", "triton"])
@pytest.mark.parametrize("info", info_cases(signopt_only=True))
def test_kernel_backend_runs_or_says_why(info: OptimInfo, name: str) -> None:
    """An explicit kernel backend either runs (and says so) or raises a ValueError naming it."""
    params = make_params()
    try:
        opt = build(info, params, info.inputs[0], backend=name)
    except ValueError as exc:
        assert name in str(exc)
        return
    assert opt.backends == [name]
    twin = _clone_params(params)
    ref = build(info, twin, info.inputs[0], backend="torch")
    run(opt, params, range(2))
    run(ref, twin, range(2))
    assert opt.last_step_backends == [name]
    assert_snapshot_equal(snapshot(opt, params), snapshot(ref, twin))

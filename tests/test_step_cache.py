"""The per-group step plan that ``SignOptimizer.step`` keeps between steps.

A kept plan must give exactly the results of building everything afresh each step
(``uncached``: every plan dropped before each step) and of a fresh optimizer, whatever changes
between steps: hyperparameters, which parameters have gradients, loaded state, new groups,
gradient layouts. Invalid values still raise before any tensor is touched.
"""
from __future__ import annotations

import gc
import random
import re
import weakref

import pytest
import torch

import signopt
from signopt.philox import VECTOR_MIN, derive_key, derive_keys

from optim_infos import assert_snapshot_equal, backend_or_skip, make_params, set_grads, snapshot

SHAPES = ((6, 5), (5,), (0,), (3, 2, 4)) + ((3,),) * 14  # 18 tensors: > VECTOR_MIN keys a group
RULES = {
    "lion": (signopt.Lion, dict(betas=(0.9, 0.99), weight_decay=0.1)),
    "signum": (signopt.Signum, dict(momentum=0.9)),
    "signsgd": (signopt.SignSGD, {}),
    "stosign_fp8": (signopt.StoSignSGD, dict(state_dtype="fp8_e4m3", fp8_min_numel=8, state_block=4)),
    "conv_adamw": (signopt.SignConversion, dict(base="adamw", weight_decay=0.01)),
}
BACKENDS = ("cpp", "torch")


def build(rule: str, backend: str, params: list, **override) -> torch.optim.Optimizer:
    cls, kw = RULES[rule]
    half = len(params) // 2
    groups = [{"params": params[:half]}, {"params": params[half:], "lr": 0.02}]
    return cls(groups, lr=0.01, seed=5, backend=backend, **{**kw, **override})


def uncached_step(opt: torch.optim.Optimizer) -> None:
    opt._drop_plans()
    opt.step()


def pair(rule: str, backend: str, **override):
    """Two optimizers over equal parameters: one keeps its plans, one rebuilds every step."""
    backend_or_skip(backend)
    a, b = make_params(SHAPES), make_params(SHAPES)
    return a, build(rule, backend, a, **override), b, build(rule, backend, b, **override)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", list(RULES))
def test_plan_is_kept_and_matches_uncached(rule, backend):
    a, opt_a, b, opt_b = pair(rule, backend)
    for t in range(4):
        set_grads(a, t), set_grads(b, t)
        kept = dict(opt_a._plans)
        opt_a.step()
        uncached_step(opt_b)
        if t > 0:  # nothing changed: the step reused both groups' plans
            assert all(opt_a._plans[gi] is kept[gi] for gi in (0, 1))
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["lion", "signum", "conv_adamw"])
def test_hyperparameter_change_between_steps(rule, backend):
    """lr, betas/momentum and weight_decay changed after two steps take effect, on the kept
    plan, exactly as in a fresh optimizer loaded from the state at that point."""
    backend_or_skip(backend)
    a, b = make_params(SHAPES), make_params(SHAPES)
    opt_a, opt_b = build(rule, backend, a), build(rule, backend, b)
    for t in range(2):
        set_grads(a, t), set_grads(b, t)
        opt_a.step(), opt_b.step()
    fresh = build(rule, backend, b)
    fresh.load_state_dict(opt_b.state_dict())
    for opt in (opt_a, fresh):
        for g in opt.param_groups:
            g["lr"] = g["lr"] * 0.5
            g["weight_decay"] = 0.03
            if "betas" in g:
                g["betas"] = (0.8, 0.9)
            if "momentum" in g:
                g["momentum"] = 0.5
    kept = dict(opt_a._plans)
    for t in range(2, 4):
        set_grads(a, t), set_grads(b, t)
        opt_a.step(), fresh.step()
        assert all(opt_a._plans[gi] is kept[gi] for gi in (0, 1))
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(fresh, b))
    # and the change did something: a run that kept the old values differs
    c = make_params(SHAPES)
    opt_c = build(rule, backend, c)
    for t in range(4):
        set_grads(c, t)
        opt_c.step()
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["lion", "stosign_fp8", "conv_adamw"])
def test_gradient_presence_changes(rule, backend):
    """Parameters without a gradient on some steps skip them (their step counter too), then
    step again: the same as rebuilding every step."""
    a, opt_a, b, opt_b = pair(rule, backend)
    for t in range(6):
        for ps in (a, b):
            set_grads(ps, t)
            if t in (2, 3):
                ps[1].grad = None
                ps[12].grad = None
            if t == 4:
                for p in ps[9:]:  # a whole group without gradients
                    p.grad = None
        opt_a.step()
        uncached_step(opt_b)
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))
    if opt_a.rule().keeps_step():
        assert int(opt_a.state[a[1]]["step"]) == 4 and int(opt_a.state[a[0]]["step"]) == 6
        assert int(opt_a.state[a[12]]["step"]) == 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["lion", "stosign_fp8", "conv_adamw"])
def test_load_state_dict_into_a_stepped_optimizer(rule, backend):
    """Loading replaces every state tensor: the kept plans must go. Save after 3 steps, run
    on (diverging), load the checkpoint and the parameters back, then 3 more steps: equal to
    6 uninterrupted steps, bit for bit."""
    backend_or_skip(backend)
    a, b = make_params(SHAPES), make_params(SHAPES)
    opt_a, opt_b = build(rule, backend, a), build(rule, backend, b)
    for t in range(6):
        set_grads(a, t)
        opt_a.step()
    for t in range(3):
        set_grads(b, t)
        opt_b.step()
    sd = opt_b.state_dict()
    sd = {**sd, "state": {k: {n: v.clone() for n, v in st.items()} for k, st in sd["state"].items()}}
    saved = [p.detach().clone() for p in b]
    for t in range(10, 12):
        set_grads(b, t)
        opt_b.step()
    opt_b.load_state_dict(sd)
    assert not opt_b._plans
    with torch.no_grad():
        for p, v in zip(b, saved):
            p.copy_(v)
    for t in range(3, 6):
        set_grads(b, t)
        opt_b.step()
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [("lr", -1.0, "lr"), ("betas", (1.5, 0.9), "betas[0]"),
                                 ("weight_decay", float("nan"), "weight_decay"),
                                 ("state_block", 0, "state_block")])
def test_invalid_hyperparameter_between_steps_changes_nothing(bad, backend):
    """A bad value set in the second group after steps raises before the first group (whose
    plan is kept) is touched; fixed, the run goes on as if nothing happened."""
    key, value, name = bad
    a, opt_a, b, opt_b = pair("conv_adamw", backend)
    for t in range(2):
        set_grads(a, t), set_grads(b, t)
        opt_a.step(), opt_b.step()
    set_grads(a, 2), set_grads(b, 2)
    before = snapshot(opt_a, a)
    good = opt_a.param_groups[1][key]
    opt_a.param_groups[1][key] = value
    with pytest.raises(ValueError, match=r"(?<![\w\[])" + re.escape(name)):
        opt_a.step()
    assert_snapshot_equal(snapshot(opt_a, a), before)
    opt_a.param_groups[1][key] = good
    opt_a.step(), opt_b.step()
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", ["list_in_place", "renamed"])
def test_options_changed_in_place_or_renamed_are_checked_again(change, backend):
    """A kept plan's options are compared by identity first: a list option changed in place,
    and an option replaced by another name (the same count of keys, the same value object),
    must still be validated again before anything is touched."""
    a, opt_a, b, opt_b = pair("conv_adamw", backend)
    if change == "list_in_place":
        for opt in (opt_a, opt_b):  # with a new lr value the options are validated (and kept) again
            opt.param_groups[1]["betas"] = list(opt.param_groups[1]["betas"])
            opt.param_groups[1]["lr"] *= 0.5
    for t in range(2):
        set_grads(a, t), set_grads(b, t)
        opt_a.step(), opt_b.step()
    set_grads(a, 2), set_grads(b, 2)
    before = snapshot(opt_a, a)
    group = opt_a.param_groups[1]
    if change == "list_in_place":
        good = group["betas"][0]
        group["betas"][0] = 1.5
        with pytest.raises(ValueError, match=r"betas\[0\]"):
            opt_a.step()
        group["betas"][0] = good
    else:
        assert group["state_block"] is None
        group["state_blocks"] = group.pop("state_block")
        with pytest.raises((KeyError, ValueError), match="state_block"):
            opt_a.step()
        group["state_block"] = group.pop("state_blocks")
    assert_snapshot_equal(snapshot(opt_a, a), before)
    opt_a.step(), opt_b.step()
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_gradient_after_steps(backend):
    """A non-contiguous gradient replacing a contiguous one on a kept plan: the step equals
    one with a contiguous copy of it (cpp copies it; torch reads it as it is)."""
    a, opt_a, b, opt_b = pair("stosign_fp8", backend)
    for t in range(2):
        set_grads(a, t), set_grads(b, t)
        opt_a.step(), opt_b.step()
    set_grads(a, 2), set_grads(b, 2)
    for i in (0, 3):
        g = a[i].grad
        a[i].grad = torch.stack([g, g], -1)[..., 0]
        assert not a[i].grad.is_contiguous() and torch.equal(a[i].grad, b[i].grad)
    opt_a.step(), opt_b.step()
    set_grads(a, 3), set_grads(b, 3)
    opt_a.step(), opt_b.step()
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))


def allow_other_dtype(p: torch.Tensor) -> None:
    """Let ``p.grad`` take another dtype (torch >= 2.10 refuses that by default)."""
    if hasattr(p, "grad_dtype"):
        p.grad_dtype = None


def test_wrong_gradients_after_steps_raise_as_before():
    """Wrong dtype, shape or a sparse gradient on a kept cpp plan: the same errors as on a
    first step, raised before anything changes."""
    backend_or_skip("cpp")
    a = make_params(SHAPES)
    allow_other_dtype(a[11])
    opt = build("lion", "cpp", a)
    for t in range(2):
        set_grads(a, t)
        opt.step()
    def shrink(p):  # the same gradient object, resized in place
        p.grad.resize_(2)

    cases = [
        (lambda p: setattr(p, "grad", p.grad.double()), ValueError,
         r"^backend 'cpp' cannot run param_groups\[1\]: params\[2\] has dtype torch.float32 "
         r"but its gradient has dtype torch.float64$"),
        (shrink, RuntimeError,
         r"^gradient shape \(2,\) does not match parameter shape \(3,\) \(param_groups\[1\]\)$"),
        (lambda p: setattr(p, "grad", p.grad.to_sparse()), RuntimeError,
         r"^Lion does not support sparse gradients \(param_groups\[1\]\); use dense gradients$"),
    ]
    for make_bad, exc, msg in cases:
        set_grads(a, 2)
        before = snapshot(opt, a)
        make_bad(a[11])
        with pytest.raises(exc, match=msg):
            opt.step()
        assert_snapshot_equal(snapshot(opt, a), before)
    # a float64 gradient on the torch backend runs, as it did before the plans were kept
    c, opt_c, d, opt_d = pair("lion", "torch")
    allow_other_dtype(c[11]), allow_other_dtype(d[11])
    for t in range(3):
        set_grads(c, t), set_grads(d, t)
        if t == 2:
            c[11].grad, d[11].grad = c[11].grad.double(), d[11].grad.double()
        opt_c.step()
        uncached_step(opt_d)
    assert_snapshot_equal(snapshot(opt_c, c), snapshot(opt_d, d))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["lion", "stosign_fp8"])
def test_add_param_group_after_steps(rule, backend):
    a, opt_a, b, opt_b = pair(rule, backend)
    for t in range(2):
        set_grads(a, t), set_grads(b, t)
        opt_a.step()
        uncached_step(opt_b)
    extra_a, extra_b = make_params(((4, 3), (7,)), seed=3), make_params(((4, 3), (7,)), seed=3)
    opt_a.add_param_group({"params": extra_a, "lr": 0.005})
    opt_b.add_param_group({"params": extra_b, "lr": 0.005})
    assert not opt_a._plans
    a, b = a + extra_a, b + extra_b
    for t in range(2, 5):
        set_grads(a, t), set_grads(b, t)
        opt_a.step()
        uncached_step(opt_b)
    assert len(opt_a._plans) == 3
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_removed_outside_step(backend):
    """``opt.state`` entries removed (or the whole state cleared) between steps: the state is
    allocated afresh, as without kept plans."""
    a, opt_a, b, opt_b = pair("stosign_fp8", backend)
    for t in range(5):
        set_grads(a, t), set_grads(b, t)
        if t == 2:
            del opt_a.state[a[3]], opt_b.state[b[3]]
        if t == 3:
            opt_a.state.clear(), opt_b.state.clear()
        opt_a.step()
        uncached_step(opt_b)
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))
    assert int(opt_a.state[a[0]]["step"]) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_assigned_outside_step(backend):
    """A new tensor assigned into ``opt.state[p]``, or a new dict as ``opt.state[p]``, between
    steps is the one the next step updates (the kept plan is rebuilt), as without kept plans."""
    a, opt_a, b, opt_b = pair("lion", backend)
    for t in range(5):
        set_grads(a, t), set_grads(b, t)
        if t == 2:  # reset one tensor's momentum by assignment
            opt_a.state[a[0]]["m"] = torch.zeros_like(opt_a.state[a[0]]["m"])
            opt_b.state[b[0]]["m"] = torch.zeros_like(opt_b.state[b[0]]["m"])
        if t == 3:  # replace another tensor's whole state dict
            opt_a.state[a[1]] = {"m": torch.full_like(opt_a.state[a[1]]["m"], 0.5)}
            opt_b.state[b[1]] = {"m": torch.full_like(opt_b.state[b[1]]["m"], 0.5)}
        opt_a.step()
        uncached_step(opt_b)
        assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))
    assert not torch.equal(opt_a.state[a[1]]["m"], torch.full_like(opt_a.state[a[1]]["m"], 0.5))


def test_param_dtype_changed_between_steps():
    """``p.data`` replaced by another dtype (``model.to(torch.bfloat16)`` after steps): the new
    gradients do not fit the kept plan, which is rebuilt."""
    backend_or_skip("cpp")
    a, opt_a, b, opt_b = pair("lion", "cpp")
    for t in range(4):
        if t == 2:
            for p in a + b:
                p.data = p.data.to(torch.bfloat16)
        set_grads(a, t), set_grads(b, t)
        opt_a.step()
        uncached_step(opt_b)
    assert a[0].dtype == torch.bfloat16
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))


def test_closure_and_grad_scaler_on_kept_plan():
    """A GradScaler-skipped step on a kept plan leaves params, state and step counters as they
    were; the next step goes on as without kept plans."""
    a, opt_a, b, opt_b = pair("conv_adamw", "cpp")
    for t in range(5):
        for opt in (opt_a, opt_b):
            opt.grad_scale = torch.tensor(2.0)
            opt.found_inf = torch.tensor(1.0 if t == 2 else 0.0)
        set_grads(a, t), set_grads(b, t)
        before = snapshot(opt_a, a)
        opt_a.step(lambda: None)
        uncached_step(opt_b)
        if t == 2:
            assert_snapshot_equal(snapshot(opt_a, a), before)
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))
    assert int(opt_a.state[a[0]]["step"]) == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_kept_plan_does_not_keep_gradients_alive(backend):
    """``zero_grad(set_to_none=True)`` frees the gradients even though the plan is kept."""
    a, opt, _, _ = pair("conv_adamw", backend)
    for t in range(3):  # the plan is built on the first step and kept on the next
        set_grads(a, t)
        opt.step()
        assert opt._plans
        refs = [weakref.ref(p.grad) for p in a]
        opt.zero_grad(set_to_none=True)
        gc.collect()
        assert all(r() is None for r in refs)


@pytest.mark.parametrize("rule", list(RULES))
def test_cpp_kept_plan_checks_gradients_in_cpp(rule):
    """On a kept cpp plan the extension reads and checks the gradients (``held``): the plan
    holds them (``holds_gradients``) while they fit, and neither the held step nor the Python
    path takes them once one does not; complex parameters keep the Python path."""
    from signopt.backends.cpp_backend import HeldGroup

    a, opt, _, _ = pair(rule, "cpp")
    for t in range(2):
        set_grads(a, t)
        opt.step()
    half = len(a) // 2
    for gi, params in ((0, a[:half]), (1, a[half:])):
        plan = opt._plans[gi]
        assert isinstance(plan.held, HeldGroup)
        assert plan.holds_gradients()
        plan.held.release()
    g = a[-1].grad
    a[-1].grad = torch.stack([g, g], -1)[..., 0]  # non-contiguous
    assert not opt._plans[1].holds_gradients() and opt._plans[1].gradients(a[half:]) is None
    c = [torch.nn.Parameter(torch.randn(3, dtype=torch.complex64)), torch.nn.Parameter(torch.randn(4))]
    opt_c = signopt.Lion(c, lr=0.01, backend="cpp")
    for _ in range(2):
        for p in c:
            p.grad = torch.randn_like(p)
        opt_c.step()
    assert opt_c._plans[0].held is None


def test_held_group_of_several_calls_matches_uncached():
    """One group of fp32 and bf16 parameters with FP8 and (below fp8_min_numel) fp32 state: four
    kernel calls held in one GroupStep, bit-identical to rebuilding every step."""
    backend_or_skip("cpp")

    def make():
        gen = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(n, generator=gen).to(dt))
                for n, dt in ((50, torch.float32), (70, torch.bfloat16), (5000, torch.float32), (300, torch.bfloat16))]

    kw = dict(lr=1e-2, seed=3, backend="cpp", state_dtype="fp8_e4m3", fp8_min_numel=100, state_block=64)
    a, b = make(), make()
    opt_a, opt_b = signopt.StoSignSGD(a, **kw), signopt.StoSignSGD(b, **kw)
    for t in range(4):
        gen = torch.Generator().manual_seed(10 + t)
        for x, y in zip(a, b):
            x.grad = torch.randn(x.shape, generator=gen).to(x.dtype)
            y.grad = x.grad.clone()
        opt_a.step()
        uncached_step(opt_b)
    plan = opt_a._plans[0]
    assert len(plan.prepared.calls) == 4 and plan.held is not None
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))


def test_failed_step_releases_held_gradients():
    """A step that raises in a later group's checks leaves no gradient held by an earlier
    group's kept plan (``zero_grad(set_to_none=True)`` frees them)."""
    a, opt, _, _ = pair("lion", "cpp")
    for t in range(2):
        set_grads(a, t)
        opt.step()
    set_grads(a, 2)
    half = len(a) // 2
    refs = [weakref.ref(p.grad) for p in a[:half]]
    a[-1].grad = a[-1].grad.to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    opt.zero_grad(set_to_none=True)
    gc.collect()
    assert all(r() is None for r in refs)


def test_held_run_derives_the_values_step_values_gives():
    """``GroupStep`` advances the slots' step counters and derives this step's keys and bias
    corrections in C++ (csrc/step_values.h); they are those of the Python statement
    (``signopt.scalars.step_values``): the held step and ``signopt::step`` given
    ``step_values``' values leave the same bits, for every slot of several calls, with a seed
    past 2**63, step counters that differ per slot (past 2**32 too) and AdamW bias corrections
    that differ per slot."""
    from signopt.backends.cpp_backend import HeldGroup
    from signopt.scalars import group_scalars, step_values

    backend_or_skip("cpp")
    seed = 2**64 - 12345

    def make():
        gen = torch.Generator().manual_seed(5)
        ps = [torch.nn.Parameter(torch.randn(n, generator=gen).to(dt))
              for n, dt in ((40, torch.float32), (0, torch.float32), (70, torch.bfloat16), (300, torch.float32))]
        opt = signopt.SignConversion(ps, lr=1e-2, base="adamw", betas=(0.8, 0.97), seed=seed, backend="cpp",
                                     state_dtype="bf16", state_rounding="stochastic")
        for t in range(2):  # state allocated, plan kept
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            opt.step()
        for p, t in zip(ps, (3, 11, 2**33 + 5, 1)):  # per-slot step counters
            opt.state[p]["step"].fill_(t)
        return ps, opt

    (a, opt_a), (b, opt_b) = make(), make()
    gen = torch.Generator().manual_seed(11)
    for x, y in zip(a, b):
        x.grad = torch.randn(x.shape, generator=gen).to(x.dtype)
        y.grad = x.grad.clone()
    plan_a, plan_b = opt_a._plans[0], opt_b._plans[0]
    group, rule = opt_a.param_groups[0], plan_a.rule
    scalars = group_scalars(rule, group, None, None)
    held = plan_a.held
    assert isinstance(held, HeldGroup) and len(plan_a.prepared.calls) == 2
    assert held.check()
    held.run(group, scalars)
    steps = plan_b.steps.advance()
    assert steps == [4, 12, 2**33 + 6, 2]
    values = step_values(rule, group, scalars, steps, plan_b.indices)
    assert len(set(values.bias)) == 7 and max(values.keys) >= 2**31  # t = 2**33 + 6: both corrections 1.0
    plan_b.prepared.run([p.grad for p in b], values, False)
    assert_snapshot_equal(snapshot(opt_a, a), snapshot(opt_b, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["lion", "stosign_fp8"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_optimizer_steps_as_the_original(rule, backend, how):
    """``copy.deepcopy`` / a pickle round trip of a stepped optimizer (parameters copied with
    it) runs the same backends and steps exactly as the original goes on. (torch cannot pickle
    float8 tensors with plain ``pickle``: the pickle case keeps that rule's state in bf16.)"""
    import copy
    import pickle

    override = {"state_dtype": "bf16"} if how == "pickle" and rule == "stosign_fp8" else {}
    a, opt, _, _ = pair(rule, backend, **override)
    for t in range(2):
        set_grads(a, t)
        opt.step()
    if how == "deepcopy":
        opt_c = copy.deepcopy(opt)
    else:
        opt_c = pickle.loads(pickle.dumps(opt))
    c = [p for g in opt_c.param_groups for p in g["params"]]
    assert opt_c.backends == opt.backends and all(x is not y for x, y in zip(a, c))
    for t in range(2, 5):
        set_grads(a, t), set_grads(c, t)
        opt.step(), opt_c.step()
        assert_snapshot_equal(snapshot(opt, a), snapshot(opt_c, c))


def test_derive_keys_equals_derive_key():
    rng = random.Random(0)
    for n in (1, VECTOR_MIN - 1, VECTOR_MIN, 300):
        for _ in range(5):
            seed = rng.randrange(2**64)
            steps = [rng.choice([rng.randrange(2**63), rng.randrange(-2**63, 0), rng.randrange(1, 100)])
                     for _ in range(n)]
            indices = [rng.randrange(2**40) for _ in range(n)]
            keys = derive_keys(seed, steps, indices)
            assert keys == [k for s, i in zip(steps, indices) for k in derive_key(seed, s, i)]
            assert all(type(k) is int for k in keys)
    with pytest.raises(ValueError, match="seed"):
        derive_keys(2**64, [1] * VECTOR_MIN, list(range(VECTOR_MIN)))

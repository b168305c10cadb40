"""A state dict loads only into an optimizer of the rule that wrote it, and every saved state
tensor is checked before anything is replaced: a failed ``load_state_dict`` leaves parameters,
groups and state exactly as they were (the next step equals that of an untouched twin)."""
from __future__ import annotations

import copy
import re

import pytest
import torch

import signopt
from signopt.checkpoint import RULE_KEY

from test_checkpoint_compat import FIXTURE

FP8 = dict(state_dtype="fp8_e4m3", state_block=4, fp8_min_numel=0)
BUILD = {
    "SignSGD": lambda ps: signopt.SignSGD(ps, lr=1e-2, seed=1),
    "Signum": lambda ps: signopt.Signum(ps, lr=1e-2, momentum=0.5, seed=1),
    "Lion": lambda ps: signopt.Lion(ps, lr=1e-2, seed=1),
    "LionFP8": lambda ps: signopt.Lion(ps, lr=1e-2, seed=1, **FP8),
    "LionKappaHuber": lambda ps: signopt.LionKappa(ps, lr=1e-2, kappa="huber", huber_delta=0.1, seed=1),
    "LionKappaL1": lambda ps: signopt.LionKappa(ps, lr=1e-2, kappa="l1", seed=1),
    "StoSignSGD": lambda ps: signopt.StoSignSGD(ps, lr=1e-2, beta=0.5, seed=1),
    "StoSignSGDRow": lambda ps: signopt.StoSignSGD(ps, lr=1e-2, beta=0.5, envelope="row", seed=1),
    "SignConversionMomentum": lambda ps: signopt.SignConversion(ps, lr=1e-2, base="momentum", betas=(0.5, 0.5), seed=1),
    "SignConversionAdamW": lambda ps: signopt.SignConversion(ps, lr=1e-2, base="adamw", seed=1),
    "WrapperAdam": lambda ps: signopt.SignConversionWrapper(torch.optim.Adam(ps, lr=1e-2), seed=1),
    "WrapperSGD": lambda ps: signopt.SignConversionWrapper(torch.optim.SGD(ps, lr=1e-2, momentum=0.9), seed=1),
}


def make_params() -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in ((2, 4), (3,))]


def set_grads(params: list, t: int) -> None:
    gen = torch.Generator().manual_seed(10 + t)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def stepped(name: str, steps: int = 2) -> tuple[list, torch.optim.Optimizer]:
    params = make_params()
    opt = BUILD[name](params)
    for t in range(steps):
        set_grads(params, t)
        opt.step()
    return params, opt


def snapshot(opt: torch.optim.Optimizer, params: list) -> tuple:
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    state = {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(params) if p in opt.state}
    return copy.deepcopy(groups), state, [p.detach().clone() for p in params]


def assert_same(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for i in a[1]:
        assert a[1][i].keys() == b[1][i].keys()
        for k in a[1][i]:
            assert a[1][i][k].dtype == b[1][i][k].dtype and torch.equal(a[1][i][k], b[1][i][k]), (i, k)
    assert all(torch.equal(x, y) for x, y in zip(a[2], b[2]))


def assert_refused_and_untouched(target: str, sd: dict, match: str) -> None:
    """Loading ``sd`` into a stepped ``target`` raises ``match``; the optimizer is unchanged and
    steps exactly like a twin that never saw the call."""
    params, opt = stepped(target)
    twin_params, twin = stepped(target)
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert_same(snapshot(opt, params), before)
    set_grads(params, 5), set_grads(twin_params, 5)
    opt.step(), twin.step()
    assert_same(snapshot(opt, params), snapshot(twin, twin_params))


# ------------------------------------------------------------------------ rule identity
@pytest.mark.parametrize("source,target", [
    ("Signum", "Lion"), ("StoSignSGD", "Lion"), ("SignConversionAdamW", "Lion"), ("LionKappaHuber", "Lion"),
    ("Lion", "Signum"), ("SignSGD", "Signum"), ("Lion", "StoSignSGD"), ("StoSignSGDRow", "StoSignSGD"),
    ("SignConversionAdamW", "StoSignSGD"), ("WrapperAdam", "Lion"), ("Lion", "WrapperAdam"),
    ("WrapperSGD", "WrapperAdam"), ("Signum", "SignSGD"),
])
def test_a_state_dict_of_another_rule_is_refused(source, target):
    _, src = stepped(source)
    sd = src.state_dict()
    written = sd["param_groups"][0][RULE_KEY]
    _, tgt = stepped(target)
    running = tgt.state_dict()["param_groups"][0][RULE_KEY]
    assert written != running
    assert_refused_and_untouched(target, sd, re.escape(repr(written)) + ".*" + re.escape(repr(running)))


@pytest.mark.parametrize("source,target", [
    ("StoSignSGD", "SignConversionMomentum"), ("SignConversionMomentum", "StoSignSGD"),
    ("LionKappaL1", "Lion"), ("Lion", "LionFP8"), ("LionFP8", "Lion"),
])
def test_the_same_rule_loads_across_classes_and_formats(source, target):
    """StoSignSGD is SignConversion(base='momentum'), LionKappa('l1') is Lion: the same rule;
    a state format may differ (converted on load). Both continue like the source."""
    src_params, src = stepped(source)
    params = [torch.nn.Parameter(p.detach().clone()) for p in src_params]
    tgt = BUILD[target](params)
    tgt.load_state_dict(src.state_dict())
    assert tgt.state_dict()["param_groups"][0][RULE_KEY] == src.state_dict()["param_groups"][0][RULE_KEY]
    if "FP8" not in source + target:  # the exact continuation (FP8 conversion rounds)
        set_grads(src_params, 7), set_grads(params, 7)
        src.step(), tgt.step()
        assert all(torch.equal(a, b) for a, b in zip(src_params, params))


@pytest.mark.parametrize("scenario,build,written,running", [
    ("signum_bf16", lambda ps: signopt.Lion(ps, seed=1), "signum", "lion(kappa=l1)"),
    ("lion_kappa_huber", lambda ps: signopt.Lion(ps, seed=1), "lion(kappa=huber)", "lion(kappa=l1)"),
    ("lion_fp8", lambda ps: signopt.Signum(ps, seed=1), "lion(kappa=l1)", "signum"),
    ("stosign_row", lambda ps: signopt.StoSignSGD(ps, seed=1),
     "stochastic(base=momentum, envelope=row, envelope_source=direction)",
     "stochastic(base=momentum, envelope=element, envelope_source=direction)"),
    ("wrapper_adam", lambda ps: signopt.Lion(ps, seed=1), "sign_conversion_wrapper", "lion(kappa=l1)"),
    ("lion_fp8", lambda ps: signopt.SignConversionWrapper(torch.optim.Adam(ps), seed=1), "lion(kappa=l1)",
     "sign_conversion_wrapper(base=Adam)"),
])
def test_a_schema1_dict_of_another_rule_is_refused(scenario, build, written, running):
    """Schema 1 (the committed fixture) recorded no rule: it is read off the group's keys."""
    saved = torch.load(FIXTURE, weights_only=True)[scenario]
    params = [torch.nn.Parameter(q.clone()) for q in saved["params"]]
    opt = build(params)
    with pytest.raises(ValueError, match=re.escape(f"{written!r}; this {type(opt).__name__} runs {running!r}")):
        opt.load_state_dict(saved["state_dict"])
    assert not opt.state and all(torch.equal(p.detach(), q) for p, q in zip(params, saved["params"]))


# ------------------------------------------------------------------------ tensor checks
def _with(sd: dict, param: int, key: str, value) -> dict:
    sd = copy.deepcopy(sd)
    if value is None:
        del sd["state"][param][key]
    else:
        sd["state"][param][key] = value
    return sd


WHERE = r"state_dict\['state'\]\[{i}\] \(param_groups\[0\]\['params'\]\[{i}\]\) "


@pytest.mark.parametrize("name,param,key,value,match", [
    ("Lion", 0, "m", torch.zeros(5), r"state 'm' has shape \(5,\) \(5 elements\); the parameter needs \(2, 4\)"),
    ("Lion", 0, "m", torch.zeros(8), r"state 'm' has shape \(8,\)"),
    ("Lion", 1, "m", torch.zeros(3, dtype=torch.int32), r"state 'm' has dtype torch.int32"),
    ("Lion", 1, "m", [0.0, 0.0, 0.0], r"state 'm' must be a tensor"),
    ("Lion", 0, "m", None, r"missing: \['m'\]"),
    ("Lion", 0, "v", torch.zeros(2, 4), r"unknown: \['v'\]"),
    ("LionFP8", 0, "m_scale", torch.ones(3), r"'m_scale' must hold 2 floating scales \(blocks of 4\), got 3"),
    ("LionFP8", 1, "m_scale", None, r"'m_scale' must be a tensor"),
    ("Lion", 1, "m_scale", torch.ones(1), r"'m_scale' is an FP8 scale, but 'm' is stored as fp32"),
    ("StoSignSGD", 0, "step", torch.tensor(-1), r"state 'step' must be a non-negative integer"),
    ("StoSignSGD", 0, "step", torch.tensor(1.5), r"state 'step' must be a non-negative integer"),
    ("StoSignSGD", 0, "step", torch.tensor([1, 2]), r"state 'step' must hold one real number"),
    ("StoSignSGD", 1, "step", None, r"missing: \['step'\]"),
    ("StoSignSGD", 1, "G", torch.zeros(4), r"state 'G' has shape \(4,\)"),
    ("StoSignSGDRow", 0, "G", torch.zeros(3), r"state 'G' must be a floating tensor of shape \(2,\)"),
    ("WrapperAdam", 0, "G", torch.zeros(7), r"state 'G' has shape \(7,\)"),
    ("WrapperAdam", 1, "step", None, r"missing: \['step'\]"),
])
def test_a_bad_state_tensor_is_refused_naming_param_and_key(name, param, key, value, match):
    _, src = stepped(name)
    sd = _with(src.state_dict(), param, key, value)
    assert_refused_and_untouched(name, sd, WHERE.format(i=param) + ".*" + match if "missing" not in match
                                 and "unknown" not in match else WHERE.format(i=param) + "holds.*" + match)


def test_a_state_entry_for_an_unknown_parameter_is_refused():
    _, src = stepped("Lion")
    sd = src.state_dict()
    sd["state"][7] = sd["state"][0]
    assert_refused_and_untouched("Lion", sd, r"parameter id 7, which no saved param group lists")


def test_a_group_of_another_size_is_refused():
    _, src = stepped("Lion")
    sd = src.state_dict()
    sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:1]
    del sd["state"][1]
    assert_refused_and_untouched("Lion", sd, r"param_groups\[0\] has 1 parameters, the optimizer's has 2")

"""Optimizer registry for the contract harness, in the style of torch's ``OptimizerInfo``
(``torch/testing/_internal/common_optimizers.py``): each :class:`OptimInfo` names a
constructor, the option sets (:class:`OptimInput`) the generic tests run over, and the
invalid inputs (:class:`ErrorInput`) that must raise ``ValueError`` naming the option.

Helpers here build parameters, feed deterministic gradients, snapshot params + state and
compare snapshots bitwise.
"""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pytest
import torch
from torch import Tensor

import signopt
from signopt import backends

LR = 0.01


@dataclass(frozen=True)
class OptimInput:
    """One option set. ``kwargs`` may hold tensors (a tensor lr); :meth:`make` copies them."""

    kwargs: dict
    desc: str

    def make(self, **override: Any) -> dict:
        """A fresh copy of the kwargs (tensor values cloned) with ``override`` applied."""
        kw = {k: (v.clone() if isinstance(v, Tensor) else copy.copy(v)) for k, v in self.kwargs.items()}
        kw.update(override)
        return kw


@dataclass(frozen=True)
class ErrorInput:
    """Constructor kwargs that must raise ``ValueError`` whose message names ``name``
    (as a whole word: ``beta`` does not match ``betas[0]``)."""

    kwargs: dict
    name: str

    @property
    def regex(self) -> str:
        import re

        return rf"(?<![\w\[]){re.escape(self.name)}(?![\w\[])"


@dataclass(frozen=True)
class OptimInfo:
    """An optimizer under test.

    ``ctor(params, **kwargs)`` builds it; ``signopt_options`` says it takes the shared signopt
    options (state_dtype, backend, wd_mode, ...); ``stochastic`` that it draws random bits.
    ``features`` lists the generic contract features it supports (all signopt optimizers
    support every feature; the wrapper a documented subset).
    """

    name: str
    ctor: Callable[..., torch.optim.Optimizer]
    inputs: tuple[OptimInput, ...]
    errors: tuple[ErrorInput, ...] = ()
    stochastic: bool = False
    signopt_options: bool = True
    group_override: dict = field(default_factory=lambda: {"lr": 3 * LR, "weight_decay": 0.25})
    features: frozenset = field(default_factory=lambda: frozenset(ALL_FEATURES))


ALL_FEATURES = ("param_groups", "add_param_group", "state_dict", "closure", "grad_none",
                "sparse", "complex", "lowp", "noncontiguous", "zero_size", "tied", "named",
                "hooks", "grad_scaler", "tensor_lr")


def _kappa_tanh(c: Tensor) -> Tensor:
    """A user kappa: grad of sum log cosh(c)."""
    return torch.tanh(c)


_COMMON_ERRORS = (
    ErrorInput(dict(lr=-1e-3), "lr"),
    ErrorInput(dict(lr=float("nan")), "lr"),
    ErrorInput(dict(weight_decay=-0.1), "weight_decay"),
    ErrorInput(dict(wd_mode="coupled"), "wd_mode"),
    ErrorInput(dict(state_dtype="fp64"), "state_dtype"),
    ErrorInput(dict(maximize="yes"), "maximize"),
    ErrorInput(dict(cautious=1), "cautious"),
    ErrorInput(dict(backend="cuda_magic"), "backend"),
    ErrorInput(dict(lr=torch.tensor([1e-3, 1e-3])), "lr"),
)


def _inputs(base: dict, *extra: tuple[dict, str], state: bool = True) -> tuple[OptimInput, ...]:
    """Default + wd modes + maximize + cautious + tensor lr (+ bf16 state) + ``extra``."""
    rows = [
        (dict(), "default"),
        (dict(weight_decay=0.5, wd_mode="decoupled"), "wd_decoupled"),
        (dict(weight_decay=0.5, wd_mode="independent"), "wd_independent"),
        (dict(weight_decay=0.5, wd_mode="l2"), "wd_l2"),
        (dict(maximize=True), "maximize"),
        (dict(cautious=True), "cautious"),
        (dict(lr=torch.tensor(LR)), "tensor_lr"),
        (dict(lr=torch.tensor(LR), weight_decay=0.5), "tensor_lr_wd"),
    ]
    if state:
        rows.append((dict(state_dtype="bf16"), "state_bf16"))
    rows.extend(extra)
    return tuple(OptimInput({"lr": LR, **base, **kw}, desc) for kw, desc in rows)


def _wrapper_ctor(params: Iterable, lr: float = LR, seed: int = 11, **kw: Any) -> signopt.SignConversionWrapper:
    base = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    return signopt.SignConversionWrapper(base, lr=lr, seed=seed, **kw)


OPTIM_INFOS: tuple[OptimInfo, ...] = (
    OptimInfo("SignSGD", signopt.SignSGD, _inputs({}, state=False), _COMMON_ERRORS),
    OptimInfo("Signum", signopt.Signum, _inputs({}, (dict(momentum=0.5), "momentum_0.5")),
              _COMMON_ERRORS + (ErrorInput(dict(momentum=1.0), "momentum"),
                                ErrorInput(dict(momentum=-0.1), "momentum"))),
    OptimInfo("Lion", signopt.Lion, _inputs({}, (dict(betas=(0.95, 0.98)), "betas")),
              _COMMON_ERRORS + (ErrorInput(dict(betas=(1.0, 0.99)), "betas[0]"),
                                ErrorInput(dict(betas=(0.9, -0.01)), "betas[1]"),
                                ErrorInput(dict(betas=(0.9,)), "betas"))),
    OptimInfo("LionKappa", signopt.LionKappa, (
        OptimInput(dict(lr=LR, kappa="l2sq"), "l2sq"),
        OptimInput(dict(lr=LR, kappa="huber", huber_delta=0.5, weight_decay=0.5), "huber_wd"),
        OptimInput(dict(lr=LR, kappa="l2", weight_decay=0.5, wd_mode="independent"), "l2_wd_indep"),
        OptimInput(dict(lr=LR, kappa="row_l2", state_dtype="bf16"), "row_l2_bf16"),
        OptimInput(dict(lr=LR, kappa="lp", p=3.0, cautious=True), "lp3_cautious"),
        OptimInput(dict(lr=LR, kappa=_kappa_tanh, maximize=True), "callable_maximize"),
        OptimInput(dict(lr=torch.tensor(LR), kappa="l2", weight_decay=0.5, wd_mode="l2"), "l2_tensor_lr"),
    ), _COMMON_ERRORS + (ErrorInput(dict(kappa="l3"), "kappa"),
                         ErrorInput(dict(kappa="huber", huber_delta=0.0), "huber_delta"),
                         ErrorInput(dict(kappa="lp", p=1.0), "p"))),
    OptimInfo("StoSignSGD", signopt.StoSignSGD, _inputs(
        {"seed": 7},
        (dict(envelope_source="grad"), "env_grad"),
        (dict(envelope="row"), "env_row"),
        (dict(envelope="block", envelope_block=7), "env_block7"),
        (dict(envelope="tensor", envelope_decay=0.9), "env_tensor_decay"),
        (dict(seed=2**64 - 1, beta=0.5), "seed_max"),
    ), _COMMON_ERRORS + (ErrorInput(dict(envelope="cube"), "envelope"),
                         ErrorInput(dict(envelope_source="hessian"), "envelope_source"),
                         ErrorInput(dict(envelope_decay=0.0), "envelope_decay"),
                         ErrorInput(dict(envelope="block", envelope_block=0), "envelope_block"),
                         ErrorInput(dict(seed=-1), "seed"),
                         ErrorInput(dict(beta=1.0), "beta")), stochastic=True),
    OptimInfo("SignConversion", signopt.SignConversion, (
        OptimInput(dict(lr=LR, base="sgd", seed=3), "sgd"),
        OptimInput(dict(lr=LR, base="momentum", betas=(0.8, 0.8), seed=3, weight_decay=0.5), "momentum_wd"),
        OptimInput(dict(lr=LR, base="adamw", seed=3), "adamw"),
        OptimInput(dict(lr=LR, base="adamw", seed=3, state_dtype="bf16", envelope="row"), "adamw_bf16_row"),
        OptimInput(dict(lr=LR, base="lion", seed=3, weight_decay=0.5, wd_mode="l2", cautious=True), "lion_l2_cautious"),
        OptimInput(dict(lr=torch.tensor(LR), base="lion", seed=3, envelope="block", envelope_block=4), "lion_tensor_lr_block"),
    ), _COMMON_ERRORS + (ErrorInput(dict(base="rmsprop"), "base"),
                         ErrorInput(dict(eps=0.0), "eps"),
                         ErrorInput(dict(seed=2**64), "seed")), stochastic=True),
    OptimInfo("SignConversionWrapper(AdamW)", _wrapper_ctor, (
        OptimInput(dict(lr=LR), "element"),
        OptimInput(dict(lr=LR, envelope="row", envelope_decay=0.9), "row_decay"),
    ), (ErrorInput(dict(envelope="cube"), "envelope"),
        ErrorInput(dict(envelope_decay=1.5), "envelope_decay"),
        ErrorInput(dict(lr=-1.0), "lr"),
        ErrorInput(dict(seed=-3), "seed")),
        stochastic=True, signopt_options=False, group_override={"weight_decay": 0.5},
        features=frozenset(ALL_FEATURES) - {"lowp", "tensor_lr", "named"}),
)


def cases(feature: str | None = None, signopt_only: bool = False) -> list:
    """``pytest.param(info, input)`` for every info supporting ``feature``."""
    import pytest

    out = []
    for info in OPTIM_INFOS:
        if feature is not None and feature not in info.features:
            continue
        if signopt_only and not info.signopt_options:
            continue
        for inp in info.inputs:
            out.append(pytest.param(info, inp, id=f"{info.name}-{inp.desc}"))
    return out


def info_cases(feature: str | None = None, signopt_only: bool = False) -> list:
    """``pytest.param(info)`` per optimizer (first input only used by the test)."""
    import pytest

    return [pytest.param(i, id=i.name) for i in OPTIM_INFOS
            if (feature is None or feature in i.features) and (not signopt_only or i.signopt_options)]


# ------------------------------------------------------------------------------ helpers
SHAPES = ((6, 5), (5,), (3, 2, 4))


def make_params(shapes: Iterable[tuple[int, ...]] = SHAPES, dtype: torch.dtype = torch.float32,
                seed: int = 0) -> list[Tensor]:
    """Leaf parameters with fixed random values."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]


def grad_for(p: Tensor, step: int, index: int) -> Tensor:
    """A deterministic gradient for parameter ``index`` at ``step`` (same shape/dtype as ``p``)."""
    gen = torch.Generator().manual_seed(1000 * step + index + 1)
    shape = torch.view_as_real(p).shape if p.is_complex() else p.shape
    g = torch.randn(shape, generator=gen)
    if p.is_complex():
        g = torch.view_as_complex(g)
    return g.to(p.dtype)


def set_grads(params: list[Tensor], step: int) -> None:
    """Give every parameter its deterministic gradient for ``step``."""
    for i, p in enumerate(params):
        p.grad = grad_for(p, step, i)


def run(opt: torch.optim.Optimizer, params: list[Tensor], steps: Iterable[int]) -> None:
    """Feed deterministic gradients and step for each step number in ``steps``."""
    for t in steps:
        set_grads(params, t)
        opt.step()


def snapshot(opt: torch.optim.Optimizer, params: list[Tensor]) -> dict:
    """Deep copy of the params' values and the optimizer's state (by param position)."""
    state = {}
    for i, p in enumerate(params):
        st = opt.state.get(p, {})
        state[i] = {k: (v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v))
                    for k, v in st.items()}
    return {"params": [p.detach().clone() for p in params], "state": state}


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


def assert_snapshot_equal(a: dict, b: dict) -> None:
    """Bitwise equality (values and dtypes) of two snapshots."""
    assert len(a["params"]) == len(b["params"])
    for i, (x, y) in enumerate(zip(a["params"], b["params"])):
        assert x.dtype == y.dtype and torch.equal(x, y), f"param {i} differs: max |diff| " \
            f"{(x.double() - y.double()).abs().max().item() if x.numel() else 0}"
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        sa, sb = a["state"][i], b["state"][i]
        assert sa.keys() == sb.keys(), f"state keys of param {i}: {sorted(sa)} vs {sorted(sb)}"
        for k in sa:
            assert _equal(sa[k], sb[k]), f"state[{i}][{k!r}] differs"


def build(info: OptimInfo, params: Any, inp: OptimInput, **override: Any) -> torch.optim.Optimizer:
    """Construct ``info``'s optimizer over ``params`` with ``inp``'s kwargs."""
    return info.ctor(params, **inp.make(**override))


def backend_or_skip(name: str) -> None:
    """Skip the calling test, with the reason, where backend ``name`` cannot run here."""
    try:
        backends.load(name)
    except backends.BackendUnavailable as exc:
        pytest.skip(f"backend {name!r} unavailable: {exc}")


def through_checkpoint(sd: dict) -> dict:
    """``sd`` after ``torch.save`` and ``torch.load(weights_only=True)``, as a resume reads it."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def run_lion_with_nan_grads(backend: str, state_dtype: str, shapes, steps: int = 3, **kw):
    """Lion (weight decay 0.1, seed 9, FP8-size floor 16) over fresh parameters of ``shapes``
    for ``steps`` steps of gradients 0.1*N(0, 1) with NaN at every 13th element in step 1: the
    low-precision state formats' shared scenario. Returns ``(params, opt)``."""
    gen = torch.Generator().manual_seed(11)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    opt = signopt.Lion(params, lr=1e-2, weight_decay=0.1, state_dtype=state_dtype, fp8_min_numel=16, seed=9,
                       backend=backend, **kw)
    for step in range(steps):
        for p in params:
            g = torch.randn(p.shape, generator=gen) * 0.1
            if step == 1:
                g.view(-1)[::13] = float("nan")
            p.grad = g
        opt.step()
    return params, opt

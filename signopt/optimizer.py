"""``SignOptimizer``: the ``torch.optim.Optimizer`` shell shared by every signopt rule.

It validates options (a failing call changes nothing), resolves each group's backend once,
initialises state, computes the per-step scalars in one place (:mod:`signopt.scalars`) and
hands each group to its backend. What a group's step needs besides the gradients and the
scalars (slots, state, the backend's prepared call) is kept between steps as the group's plan
(:class:`_GroupPlan`), so a step over many small tensors costs little Python per tensor. State dicts carry a schema version, hold only tensors and
plain Python values (``torch.load(..., weights_only=True)`` loads them) and keep each state
tensor's storage format instead of casting it to the parameter dtype.
"""
from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import backends as backend_registry
from . import declaration, sharding, state_layout
from .backends import Held, Prepared
from .backends.slot import ParamSlot
from .checkpoint import (CALLABLE_MARKER, RULE_KEY, SCHEMA_KEY, SCHEMA_VERSION, check_entry, check_identity,
                         restore_entry, saved_identity, schema_of)
from .declaration import STEP_STATS
from .rule import UpdateRule, rule_from_group, validate_group
from .scalars import GroupScalars, StepCounters, group_scalars, step_values

# Group keys that describe storage, not hyperparameters: a loaded checkpoint does not override
# them; its state is converted into the format the optimizer was built with.
LAYOUT_KEYS = ("state_dtype", "state_block", "state_scale", "fp8_min_numel")

log = logging.getLogger("signopt")


def _default_seed() -> int:
    """A seed drawn from torch's default generator (so ``torch.manual_seed`` fixes it)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64).item())


def _initial_lr(lr: Any) -> float:
    """The group's initial lr as a float (``wd_mode='independent'`` divides by it)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr as a tensor must have one element, got shape {tuple(lr.shape)}")
        return float(lr.item())
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f"lr must be a float or a 1-element tensor, got {lr!r}")
    return float(lr)


def _group_tensors(params: Any) -> list:
    if isinstance(params, Tensor):
        return [params]
    if isinstance(params, (set,)):
        raise TypeError("params must be an ordered collection of tensors; got a set")
    return list(params)


@dataclass(eq=False)
class _GroupPlan:
    """A param group's step work, built by :meth:`SignOptimizer._build`: its slots (state
    allocated), their step counters and the backend's prepared step. The next step reuses it
    while the group holds the same parameters from the same start index, its rule is the same,
    ``opt.state`` holds the same dicts and state tensors as after the last step (see
    :class:`_StateSnapshot`) and every gradient has the layout recorded in ``expect`` (see
    :meth:`gradients`)."""

    params: list  # group["params"] when built (compared by identity)
    start: int  # index over all groups of params[0]
    rule: UpdateRule
    expect: list  # per param: None (no gradient) or its gradient's (dtype, shape, device)
    slots: list[ParamSlot]
    indices: list[int]  # per slot: tensor index over all groups (keys the random stream)
    steps: StepCounters  # per slot: its step counter (rules that keep one), else none
    prepared: Prepared  # the backend's step of these slots
    held: Held | None = None  # the prepared step's form that reads and checks the gradients itself
    gradless: list | None = None  # with ``held``: the params expected without a gradient

    def fits(self, params: list, start: int, rule: UpdateRule) -> bool:
        return (start == self.start and rule == self.rule and rule.kappa_fn is self.rule.kappa_fn
                and len(params) == len(self.params) and all(map(operator.is_, params, self.params)))

    def holds_gradients(self) -> bool:
        """With a held step (outside ``torch.compile``): whether it read this step's gradients
        and every one has the plan's layout (it keeps them for its run)."""
        if self.held is None or torch.compiler.is_compiling():
            return False
        return not any(p.grad is not None for p in self.gradless) and self.held.check()

    def gradients(self, params: list) -> list[Tensor] | None:
        """This step's gradients of the slots, or None when any parameter's gradient presence,
        layout (strided, contiguous), dtype, shape or device differs from the plan's."""
        grads = []
        append = grads.append
        for p, want in zip(params, self.expect):
            g = p.grad
            if want is None:
                if g is not None:
                    return None
            elif (g is None or g.layout is not _STRIDED or g.dtype is not want[0]
                  or g.shape != want[1] or g.device != want[2] or not g.is_contiguous()):
                return None
            else:
                append(g)
        return grads


@dataclass(eq=False)
class _GroupWork:
    """One group's work in a step, settled by :meth:`SignOptimizer._plan` before any tensor is
    touched. With a kept ``plan``: this step's ``grads`` for its slots, or ``held`` when the
    plan's held step read them. Without: ``work`` lists the ``(param, index)`` pairs with
    gradients, and ``keep`` says whether the plan built from them may be kept."""

    group: dict
    backend: Any
    rule: UpdateRule
    start: int
    plan: _GroupPlan | None = None
    grads: list[Tensor] | None = None
    held: bool = False
    work: list[tuple[Tensor, int]] | None = None
    keep: bool = True


_STRIDED = torch.strided


def _same_option(a: Any, b: Any) -> bool:
    """Tensors and callables by identity; other option values (numbers, strings, tuples) by
    value, so that a float a scheduler writes again is re-validated only when it differs."""
    if isinstance(a, Tensor) or isinstance(b, Tensor) or callable(a) or callable(b):
        return a is b
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class _CheckedOptions:
    """A group's options as last validated (lists copied as tuples) and the rule they give."""

    items: tuple
    rule: UpdateRule
    keys: tuple  # the option names, in items' order
    same: tuple  # the validated value objects, a list's replaced by a sentinel no value is

    @staticmethod
    def of(group: dict, rule: UpdateRule) -> _CheckedOptions:
        items = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in group.items() if k != "params")
        same = tuple(object() if isinstance(group[k], list) else group[k] for k, _ in items)
        return _CheckedOptions(items, rule, tuple(k for k, _ in items), same)

    def tensors(self) -> tuple[Tensor, ...]:
        """The tensor options that were validated (their values are not read again)."""
        return tuple(v for _, value in self.items for v in (value if isinstance(value, tuple) else (value,))
                     if isinstance(v, Tensor))

    def matches(self, group: dict) -> bool:
        if len(group) != len(self.items) + 1:
            return False
        if all(map(operator.is_, map(group.get, self.keys, repeat(_MISSING)), self.same)):
            return True  # the usual step: every option is the (immutable) object validated
        for key, value in self.items:
            now = group.get(key, _MISSING)
            if isinstance(now, list):
                now = tuple(now)
            if not _same_option(now, value):
                return False
        return True


_MISSING = object()


class _StateSnapshot:
    """``opt.state`` as a step left it: the mapping, its dicts and their values, by identity.
    Assigning a new dict into ``opt.state[p]``, a new tensor into one, or adding or removing an
    entry anywhere drops every kept plan (checked once per step, not per tensor)."""

    def __init__(self, state: dict) -> None:
        self.state = state
        self.dicts = list(state.values())
        self.views = [d.values() for d in self.dicts]  # live views: read again in holds()
        self.values = list(chain.from_iterable(self.views))

    def holds(self, state: dict) -> bool:
        if (state is not self.state or len(state) != len(self.dicts)
                or not all(map(operator.is_, state.values(), self.dicts))):
            return False
        values = list(chain.from_iterable(self.views))
        return len(values) == len(self.values) and all(map(operator.is_, values, self.values))


def _regular(p: Tensor, g: Tensor) -> bool:
    """A gradient a kept plan can take as it is: plain strided, contiguous, like its param."""
    return (not sharding.is_dtensor(p) and g.layout is _STRIDED and g.dtype is p.dtype
            and g.device == p.device and g.is_contiguous())


class SignOptimizer(Optimizer):
    """Base class; subclasses set :attr:`family` and their defaults."""

    family: ClassVar[str]
    _step_supports_amp_scaling = True

    def __init__(self, params: Iterable, defaults: dict[str, Any], backend: str = "auto",
                 step_stats: bool = False) -> None:
        if backend not in backend_registry.CHOICES:
            raise ValueError(f"backend must be one of {backend_registry.CHOICES}, got {backend!r}")
        if not isinstance(step_stats, bool):
            raise ValueError(f"step_stats must be True or False, got {step_stats!r}")
        self._requested_backend = backend
        self._step_stats = step_stats
        self._signs: dict[Tensor, Tensor] = {}  # step_stats: per parameter, its previous update signs
        self._last_stats: dict[int, tuple[Tensor, int, tuple[str, ...]]] = {}
        self._group_backends: list = []
        self._last_nonfinite: list[Tensor] = []
        self.last_step_backends: list[str] = []
        self._checked: dict[int, _CheckedOptions] = {}  # per group: the options validated last
        self._drop_plans()
        defaults = dict(defaults)
        if defaults.get("seed") is None:
            defaults["seed"] = _default_seed()
        validate_group(self.family, {**defaults, "lr0": _initial_lr(defaults["lr"])})
        super().__init__(params, defaults)

    # ----------------------------------------------------------------- groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        group["params"] = _group_tensors(group["params"])
        merged = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        validate_group(self.family, {**merged, "lr0": _initial_lr(merged["lr"])})
        for i, p in enumerate(group["params"]):
            t = p[1] if isinstance(p, tuple) else p
            if not isinstance(t, Tensor):
                raise TypeError(f"params[{i}] must be a Tensor, got {type(t).__name__}")
            if not (t.is_floating_point() or t.is_complex()):
                raise ValueError(f"params[{i}] must be floating point or complex, got dtype {t.dtype}")
            if t.is_sparse:
                raise ValueError(f"params[{i}] is sparse; signopt optimizers need dense parameters")
        tensors = [p[1] if isinstance(p, tuple) else p for p in group["params"]]
        rule = rule_from_group(self.family, merged)
        for i, t in enumerate(tensors):
            reason = sharding.unsupported(rule, t)
            if reason is not None:
                raise ValueError(f"params[{i}]: {reason}")
        backend = backend_registry.resolve(self._requested_backend, rule,
                                           [sharding.local(t) for t in tensors])
        if self._step_stats:
            reason = getattr(backend, "stats_unsupported", lambda _: "it does not compute them")(
                [sharding.local(t) for t in tensors])
            if reason is not None:
                raise ValueError(f"step_stats=True: backend {backend.name!r} cannot compute step statistics "
                                 f"for this group ({reason}); use backend='torch' or step_stats=False")
        group["lr0"] = _initial_lr(merged["lr"])
        super().add_param_group(group)
        self._checked[len(self.param_groups) - 1] = _CheckedOptions.of(self.param_groups[-1], rule)
        self._group_backends.append(backend)
        self._drop_plans()

    def __getstate__(self) -> dict[str, Any]:
        """torch's state (defaults, state, param groups) plus the requested backend and each
        group's resolved one by name (copies and unpickled optimizers run the same backends)."""
        return {**super().__getstate__(), "_requested_backend": self._requested_backend,
                "_step_stats": self._step_stats, "_group_backend_names": self.backends}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        names = state.pop("_group_backend_names", None)
        super().__setstate__(state)
        if names is not None:  # a copy or an unpickled optimizer (not load_state_dict's call)
            self._group_backends = [backend_registry.load(name) for name in names]
            self._step_stats = state.get("_step_stats", False)
            self._signs = {}
            self._last_stats = {}
            self._last_nonfinite = []
            self.last_step_backends = []
            self._checked = {}
            self._drop_plans()

    @property
    def backends(self) -> list[str]:
        """Name of the backend resolved for each param group."""
        return [b.name for b in self._group_backends]

    def rule(self, group_index: int = 0) -> UpdateRule:
        """The :class:`UpdateRule` of a param group."""
        return rule_from_group(self.family, self.param_groups[group_index])

    # ------------------------------------------------------------------ state
    def _init_state(self, rule: UpdateRule, param: Tensor) -> dict:
        st = self.state[param]
        if st:
            return st
        numel = param.numel() * (2 if param.is_complex() else 1)  # of the full tensor for a DTensor
        p = sharding.local(param)  # state is allocated for the local shard (sharding.wrap_state)
        shape = tuple(torch.view_as_real(p).shape if p.is_complex() else p.shape)
        st.update(state_layout.allocate(rule, shape, numel, p.device))
        sharding.wrap_state(param, rule, st)
        return st

    def state_bytes(self) -> dict[str, float]:
        """Optimizer-state bytes: ``total`` and ``per_param`` (over all parameters' elements)."""
        total = sum(state_layout.nbytes(sharding.local_state(st)) for st in self.state.values())
        numel = sum(sharding.local(p).numel() * (2 if p.is_complex() else 1)
                    for g in self.param_groups for p in g["params"])
        return {"total": float(total), "per_param": total / max(numel, 1)}

    def nonfinite_count(self) -> int:
        """Gradient elements that were not finite in the last step (their update was skipped)."""
        return int(sum(int(c.item()) for c in self._last_nonfinite))

    def step_stats(self) -> list[dict[str, Any] | None]:
        """The last step's statistics per param group (``step_stats=True``; docs/optimizers.md):
        ``update_rms`` = sqrt(sum of (p_new - p)^2 / numel), the update including weight decay,
        at fp32 before rounding into the parameter dtype, summed in fp64 (0 where the gradient was
        not finite); ``sign_flip_fraction`` = elements whose update direction's sign reversed
        since their previous update / numel; ``nonfinite`` = gradient elements that were NaN/inf;
        ``state_absmax`` = per state slot, max |value| the step wrote (before encoding; NaN if
        any is NaN); ``numel`` = the group's elements that had a gradient. None for a group the
        last step did not update. Reads the values from the device (a synchronisation)."""
        if not self._step_stats:
            raise RuntimeError("step_stats() needs the optimizer built with step_stats=True")
        out: list[dict[str, Any] | None] = []
        for gi in range(len(self.param_groups)):
            rec = self._last_stats.get(gi)
            if rec is None:
                out.append(None)
                continue
            buf, numel, slots = rec
            v = dict(zip(STEP_STATS, buf.tolist()))
            n = max(numel, 1)
            out.append({"update_rms": math.sqrt(v["update_sq_sum"] / n), "sign_flip_fraction": v["sign_flips"] / n,
                        "nonfinite": int(v["nonfinite"]), "state_absmax": {k: v[f"{k}_absmax"] for k in slots},
                        "numel": numel})
        return out

    # ------------------------------------------------------------------- step
    def _drop_plans(self) -> None:
        """Forget every group's kept plan (state or groups changed outside a step)."""
        self._plans: dict[int, _GroupPlan] = {}
        self._plans_state: _StateSnapshot | None = None  # self.state after the last step

    def _group_rule(self, gi: int, group: dict) -> UpdateRule:
        """The group's rule, validating its options only when one was set or replaced since the
        last step (a scheduler writing a new float, a new tensor): a tensor option's value is
        read when the tensor is set, as torch's optimizers check theirs at construction, never
        inside a step that changes it in place (so ``torch.compile`` sees no host read)."""
        checked = self._checked.get(gi)
        if checked is None or not checked.matches(group):
            validate_group(self.family, group, checked.tensors() if checked is not None else ())
            checked = _CheckedOptions.of(group, rule_from_group(self.family, group))
            self._checked[gi] = checked
        return checked.rule

    def _plan(self) -> list[_GroupWork]:
        """Validate everything a step needs before any tensor is touched: each group's
        :class:`_GroupWork`."""
        if self._plans_state is None or not self._plans_state.holds(self.state):
            self._plans.clear()  # opt.state, a dict in it or a tensor in one changed outside step()
            self._plans_state = None
        works: list[_GroupWork] = []
        try:
            self._plan_groups(works)
        except BaseException:
            for w in works:  # gradients a held step keeps for a run that will not come
                if w.held:
                    w.plan.held.release()
            raise
        return works

    def _plan_groups(self, works: list[_GroupWork]) -> None:
        """:meth:`_plan`'s work, appending to ``works`` group by group."""
        index = 0
        for gi, (group, backend) in enumerate(zip(self.param_groups, self._group_backends)):
            rule = self._group_rule(gi, group)
            params = group["params"]
            w = _GroupWork(group, backend, rule, index)
            plan = self._plans.get(gi)
            if plan is not None and plan.fits(params, index, rule):
                w.held = plan.holds_gradients()
                w.grads = None if w.held else plan.gradients(params)
                if w.held or w.grads is not None:
                    w.plan = plan
                    works.append(w)
                    index += len(params)
                    continue
            w.work = []
            for p in params:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients "
                                           f"(param_groups[{gi}]); use dense gradients")
                    if p.grad.shape != p.shape:
                        raise RuntimeError(f"gradient shape {tuple(p.grad.shape)} does not match "
                                           f"parameter shape {tuple(p.shape)} (param_groups[{gi}])")
                    sharding.check_grad(p, f"param_groups[{gi}]")
                    reason = sharding.unsupported(rule, p)
                    if reason is not None:
                        raise ValueError(f"param_groups[{gi}]: {reason}")
                    w.work.append((p, index))
                    w.keep = w.keep and _regular(p, p.grad)
                index += 1
            reason = backend.unsupported(rule, [sharding.local(p) for p, _ in w.work])
            if reason is not None:
                raise ValueError(f"backend {backend.name!r} cannot run param_groups[{gi}]: {reason}")
            works.append(w)

    def _build(self, w: _GroupWork) -> _GroupPlan:
        """Allocate missing state and build the group's plan (with the backend's held step when
        it will be kept); sets ``w.grads`` to this step's gradients."""
        rule = w.rule
        slots = []
        for p, index in w.work:
            st = self._init_state(rule, p)
            local = sharding.local(p)
            sign = None
            if self._step_stats:
                sign = self._signs.get(p)
                if sign is None:
                    sign = self._signs[p] = torch.zeros(local.numel() * (2 if local.is_complex() else 1),
                                                        dtype=torch.int8, device=local.device)
            slots.append(ParamSlot(param=local, grad=None, state=sharding.local_state(st),
                                   index=index, index_offset=sharding.index_offset(p), sign=sign))
        w.grads = [sharding.local(p.grad) for p, _ in w.work]
        steps = StepCounters([slot.state[state_layout.STEP_KEY] for slot in slots] if rule.keeps_step() else [])
        prepared = w.backend.prepare(rule, slots)
        params = w.group["params"]
        expect = [None if p.grad is None else (p.dtype, p.shape, p.device) for p in params]
        hold = getattr(prepared, "hold", None) if w.keep and not torch.compiler.is_compiling() else None
        held = hold() if hold is not None else None
        gradless = [p for p, want in zip(params, expect) if want is None] if held is not None else None
        return _GroupPlan(list(params), w.start, rule, expect, slots, [s.index for s in slots],
                          steps, prepared, held, gradless)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step; honours GradScaler's ``grad_scale``/``found_inf`` attributes.

        Each group's plan (state, slots, the backend's prepared step) is kept between steps and
        rebuilt when the group's parameters, its rule or the presence or layout of a gradient
        changes; ``add_param_group`` and ``load_state_dict`` drop every plan, and so does any
        change to ``self.state`` between steps (an entry added or removed, a new dict assigned
        into ``opt.state[p]`` or a new tensor into one)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        works = self._plan()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        self._last_nonfinite = []
        self._last_stats = {}
        self.last_step_backends = []
        built = False
        for gi, w in enumerate(works):
            scalars = group_scalars(w.rule, w.group, grad_scale, found_inf)
            if w.plan is None:
                w.plan = self._build(w)
                built = True
                if w.keep:
                    self._plans[gi] = w.plan
                else:
                    self._plans.pop(gi, None)
            if w.plan.slots:
                count = self._run(w, scalars, found_inf)
                if count is not None:
                    self._last_nonfinite.append(count)
                if self._step_stats:
                    numel = sum(s.sign.numel() for s in w.plan.slots)
                    names = tuple(s.name for s in state_layout.slots(w.rule))
                    self._last_stats[gi] = (w.plan.prepared.stats, numel, names)
            self.last_step_backends.append(w.backend.name)
        if self._plans_state is None or built:
            self._plans_state = _StateSnapshot(self.state)  # (plans built: state may be new)
        return loss

    @staticmethod
    def _run(w: _GroupWork, scalars: GroupScalars, found_inf: Tensor | None) -> Tensor | None:
        """One step of a group's plan: step counters, this step's values, the update (a held
        step advances its counters and derives the values itself)."""
        plan, rule = w.plan, w.rule
        if w.held:
            count = plan.held.run(w.group, scalars)
        else:
            steps = plan.steps.advance() if rule.keeps_step() else []
            values = step_values(rule, w.group, scalars, steps, plan.indices)
            count = plan.prepared.run(w.grads, values, w.keep)
        if found_inf is not None and rule.keeps_step():
            # As fused AdamW: a step GradScaler skips (inf/NaN) does not advance the counter.
            skipped = (found_inf > 0).reshape(()).to(device="cpu", dtype=torch.int64)
            if skipped.item():
                plan.steps.retreat()
        return count

    # ------------------------------------------------------------- state dict
    def state_dict(self) -> dict[str, Any]:
        """torch's layout plus the schema (:mod:`signopt.checkpoint`), at the top and in every
        group with the group's rule identity. With DTensor parameters per-block vectors are
        gathered (collective: call it on every rank)."""
        sd = super().state_dict()
        for gi, g in enumerate(sd["param_groups"]):
            if callable(g.get("kappa")):
                g["kappa"] = CALLABLE_MARKER
            g[SCHEMA_KEY] = SCHEMA_VERSION
            g[RULE_KEY] = self.rule(gi).identity()
        owners = [(p, group) for group in self.param_groups for p in group["params"]]
        for key in sorted(sd["state"]):
            p, group = owners[key]
            sd["state"][key] = sharding.export_state(p, rule_from_group(self.family, group),
                                                     sd["state"][key])
        sd[SCHEMA_KEY] = SCHEMA_VERSION
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of the same rule (any schema in ``checkpoint.READABLE_SCHEMAS``):
        hyperparameters come from it, storage layout (``LAYOUT_KEYS``) stays this optimizer's and
        the state is converted into it. Everything is checked (schema, rule, groups, every state
        tensor's names, shape, element count and format) and converted before anything is
        replaced: a failed load leaves the optimizer as it was."""
        schema_of(state_dict)
        saved_groups = [{k: v for k, v in g.items() if k not in (SCHEMA_KEY, RULE_KEY)}
                        for g in state_dict["param_groups"]]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} param groups, optimizer has "
                             f"{len(self.param_groups)}")
        owner = type(self).__name__
        loaded_groups = []
        for i, (raw, sg, group) in enumerate(zip(state_dict["param_groups"], saved_groups, self.param_groups)):
            if len(sg["params"]) != len(group["params"]):
                raise ValueError(f"state_dict param_groups[{i}] has {len(sg['params'])} parameters, "
                                 f"the optimizer's has {len(group['params'])}")
            check_identity(i, saved_identity(raw), self.rule(i).identity(), owner)
            loaded = {**sg, **{k: group.get(k) for k in LAYOUT_KEYS}}
            if loaded.get("kappa") == CALLABLE_MARKER:
                if not callable(group.get("kappa")):
                    raise ValueError(f"param_groups[{i}] was saved with a callable kappa; build the "
                                     "optimizer with that callable before loading")
                loaded["kappa"] = group["kappa"]
            validate_group(self.family, loaded)
            loaded_groups.append(loaded)
        # Saved ids map to params by position in the groups, as in torch (ints, or FQNs from
        # DCP's set_optimizer_state_dict).
        owners = {}
        for gi, (sg, group, loaded) in enumerate(zip(saved_groups, self.param_groups, loaded_groups)):
            for j, (saved_id, p) in enumerate(zip(sg["params"], group["params"])):
                saved_fmt = declaration.format_for(sg["state_dtype"], sg.get("state_scale"))
                saved_block = declaration.block_of(saved_fmt, sg["state_block"])
                owners[saved_id] = (p, loaded, saved_block, f"param_groups[{gi}]['params'][{j}]")
        restored = {}
        for key, saved in state_dict["state"].items():
            if key not in owners and isinstance(key, str) and key.isdigit():
                key = int(key)
            if key not in owners:
                raise ValueError(f"state_dict['state'] has an entry for parameter id {key!r}, which no "
                                 "saved param group lists")
            p, loaded, saved_block, where = owners[key]
            where = f"state_dict['state'][{key!r}] ({where})"
            saved = {k: sharding.full(v) for k, v in saved.items()}  # DTensors: gathered
            rule = rule_from_group(self.family, loaded)
            check_entry(where, rule, sharding.real_shape(p), saved, saved_block)
            numel = math.prod(sharding.real_shape(p))
            fmt = state_layout.effective_format(rule, numel)
            entry = restore_entry(rule, saved, saved_block, fmt, p.device, sharding.real_shape(p))
            restored[p] = sharding.shard_state(p, rule, entry)  # plain p: unchanged
        # Nothing above changed the optimizer; torch's load sets the groups (the state it would
        # cast to the parameter dtype is set from ``restored`` instead).
        self._drop_plans()
        self._signs = {}  # step statistics count sign reversals again from the next update
        super().load_state_dict({"state": {}, "param_groups": saved_groups})
        for group, loaded in zip(self.param_groups, loaded_groups):
            group.update({k: loaded[k] for k in LAYOUT_KEYS + ("kappa",) if k in loaded})
        for p, entry in restored.items():
            self.state[p] = entry
        self._checked = {}  # validated above, as merged dicts: validated again at the next step

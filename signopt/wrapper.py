"""Stochastic-sign conversion of any ``torch.optim.Optimizer`` (arXiv 2604.15416).

Each step the base optimizer proposes a displacement, which becomes the base direction
``d = (p_before - p_after) / lr_base``; the wrapper then steps ``p <- p_before - lr*S_B(d)``
with the running envelope ``B <- max(B*envelope_decay, |d|)`` (per element, row, block or
tensor), so ``E[dp] = -lr*d/B``. The base keeps its own state and weight decay.

Cost: one copy of every stepped parameter during ``step`` (freed after it), plus the envelope
(fp32; one value per element for ``envelope="element"``) and a step counter per parameter;
time is the base step plus one copy, one subtraction and the stochastic-sign step, which runs
on the group's backend (the shared ``SignConversion(base="sgd")`` rule with ``g = d``, so the
fused kernels serve it). For bf16/fp16 parameters ``d`` is rounded to the parameter dtype.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import backends as backend_registry
from . import sharding, state_layout
from .backends.slot import ParamSlot
from .checkpoint import (BASE_PREFIX, RULE_KEY, SCHEMA_KEY, SCHEMA_VERSION, check_entry, check_identity,
                         restore_entry, saved_identity, schema_of)
from .optimizer import _default_seed
from .reference import compute_dtype
from .rule import ENVELOPES, UpdateRule, _real
from .scalars import f32, group_scalars, step_values


def _rule(envelope: str, envelope_block: int) -> UpdateRule:
    return UpdateRule(family="stochastic", base="sgd", envelope=envelope, envelope_block=envelope_block)


def _check_params(params: list, rule: UpdateRule) -> None:
    """The sign step needs floating (or complex) dense parameters; DTensor parameters a
    sharding the rule can step shard by shard (:mod:`signopt.sharding`)."""
    for i, p in enumerate(params):
        if isinstance(p, Tensor) and not (p.is_floating_point() or p.is_complex()):
            raise ValueError(f"params[{i}] must be floating point or complex, got dtype {p.dtype}")
        reason = sharding.unsupported(rule, p) if isinstance(p, Tensor) else None
        if reason is not None:
            raise ValueError(f"params[{i}]: {reason}")


def _check_options(lr: Any, envelope: Any, envelope_decay: Any, envelope_block: Any, where: str = "") -> None:
    """The wrapper's own options (``lr`` None: each base group's lr)."""
    if envelope not in ENVELOPES:
        raise ValueError(f"{where}envelope must be one of {ENVELOPES}, got {envelope!r}")
    _real(f"{where}envelope_decay", envelope_decay, 0.0, 1.0, lo_open=True)
    if lr is not None:
        _real(f"{where}lr", lr, 0.0)
    if isinstance(envelope_block, bool) or not isinstance(envelope_block, int) or envelope_block < 1:
        raise ValueError(f"{where}envelope_block must be a positive int, got {envelope_block!r}")


class SignConversionWrapper(Optimizer):
    """Wrap ``optimizer``; ``lr`` is the sign step (default: each base group's lr)."""

    def __init__(self, optimizer: Optimizer, lr: float | None = None, *, envelope: str = "element",
                 envelope_decay: float = 1.0, envelope_block: int = 256,
                 seed: int | None = None, backend: str = "auto") -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        _check_options(lr, envelope, envelope_decay, envelope_block)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        for g in optimizer.param_groups:
            _check_params(g["params"], _rule(envelope, envelope_block))
        if backend not in backend_registry.CHOICES:
            raise ValueError(f"backend must be one of {backend_registry.CHOICES}, got {backend!r}")
        self.base = optimizer
        self._requested_backend = backend
        self._group_backends: list = []
        self.last_step_backends: list[str] = []
        self._sign_lr = lr
        self._forward_groups = False
        groups = [{"params": list(g["params"]), "lr": g["lr"] if lr is None else lr}
                  for g in optimizer.param_groups]
        defaults = dict(lr=lr if lr is not None else optimizer.defaults.get("lr", 1e-3),
                        envelope=envelope, envelope_decay=envelope_decay,
                        envelope_block=envelope_block,
                        seed=_default_seed() if seed is None else seed)
        super().__init__(groups, defaults)
        self._forward_groups = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (its keys are the base's hyperparameters) and to
        the wrapper (sign lr: the constructor's ``lr`` or the base group's lr); the group's
        sign-step backend is resolved here."""
        if not getattr(self, "_forward_groups", False):
            backend = self._resolve(param_group["params"], param_group.get("envelope", self.defaults["envelope"]),
                                    param_group.get("envelope_block", self.defaults["envelope_block"]))
            super().add_param_group(param_group)
            self._group_backends.append(backend)
            return
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        _check_params(params, _rule(self.defaults["envelope"], self.defaults["envelope_block"]))
        backend = self._resolve(params, self.defaults["envelope"], self.defaults["envelope_block"])
        self.base.add_param_group({**param_group, "params": params})
        bg = self.base.param_groups[-1]
        super().add_param_group({"params": list(bg["params"]),
                                 "lr": bg["lr"] if self._sign_lr is None else self._sign_lr})
        self._group_backends.append(backend)

    def _resolve(self, params: list[Tensor], envelope: str, envelope_block: int) -> Any:
        return backend_registry.resolve(self._requested_backend, _rule(envelope, envelope_block),
                                        [sharding.local(p) for p in params])

    @property
    def backends(self) -> list[str]:
        """Name of the backend resolved for each param group's sign step."""
        return [b.name for b in self._group_backends]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run the base step, then replace its displacement by the stochastic sign step."""
        loss = None
        if closure is not None:  # gradients first: which params step depends on them
            with torch.enable_grad():
                loss = closure()
        for gi, wg in enumerate(self.param_groups):  # fail before the base touches anything
            for p in wg["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError(f"SignConversionWrapper does not support sparse gradients "
                                       f"(param_groups[{gi}]); use dense gradients")
        work = []
        for wg, bg in zip(self.param_groups, self.base.param_groups):
            base_lr = float(bg["lr"])
            if base_lr <= 0:
                raise ValueError(f"the base optimizer's lr must be > 0 to recover its direction, got {base_lr}")
            work.append([(p, p.detach().clone()) for p in wg["params"] if p.grad is not None])
        self.base.step()
        index = 0
        self.last_step_backends = []
        for wg, bg, stepped, backend in zip(self.param_groups, self.base.param_groups, work,
                                            self._group_backends):
            rule = _rule(wg["envelope"], wg["envelope_block"])
            before = {id(p): p0 for p, p0 in stepped}
            slots = []
            for p in wg["params"]:
                if id(p) in before:
                    slot = self._slot(rule, wg, float(bg["lr"]), p, before[id(p)], index)
                    if slot is not None:
                        slots.append(slot)
                index += 1
            if slots:
                scalars = group_scalars(rule, {"lr": wg["lr"], "weight_decay": 0.0, "lr0": 1.0,
                                               "envelope_decay": wg["envelope_decay"]}, None, None)
                steps = [int(s.state[state_layout.STEP_KEY].item()) for s in slots]
                values = step_values(rule, wg, scalars, steps, [s.index for s in slots])
                backend_registry.step_once(backend, rule, slots, values)
            self.last_step_backends.append(backend.name)
        return loss

    def _slot(self, rule: UpdateRule, group: dict, base_lr: float, p: Tensor, p0: Tensor,
              index: int) -> ParamSlot | None:
        """Turn the base's displacement into the slot of a ``base="sgd"`` stochastic-sign step:
        ``d = (p0 - p)/lr_base`` (NaN where the gradient is not finite, which the shared
        non-finite policy then skips), ``p`` restored to ``p0``."""
        st = self.state[p]
        real = torch.view_as_real if p.is_complex() else (lambda t: t)
        if not st:
            shape = tuple(real(sharding.local(p)).shape)
            st.update(state_layout.allocate(rule, shape, p.numel() * (2 if p.is_complex() else 1), p.device))
            sharding.wrap_state(p, rule, st)
        st[state_layout.STEP_KEY] += 1  # an empty shard still counts the step, like its peers
        local, local0 = sharding.local(p), sharding.local(p0)
        if local.numel() == 0:
            return None
        dtype = compute_dtype(real(local).dtype)
        d = (real(local0).to(dtype) - real(local).to(dtype)) / f32(base_lr)
        finite = torch.isfinite(real(sharding.local(p.grad)))
        d = torch.where(finite, d, torch.full_like(d, float("nan"))).to(real(local).dtype)
        local.copy_(local0)
        grad = torch.view_as_complex(d) if p.is_complex() else d
        return ParamSlot(param=local, grad=grad, state=sharding.local_state(st),
                         index=index, index_offset=sharding.index_offset(p))

    def identity(self) -> str:
        """What this wrapper's state dicts record as their rule (:mod:`signopt.checkpoint`)."""
        return f"sign_conversion_wrapper(base={type(self.base).__name__})"

    def state_dict(self) -> dict[str, Any]:
        """The wrapper's state (envelope, step) and the base optimizer's, flattened into one
        ``state``/``param_groups`` pair (base entries prefixed ``base.``), so that DCP's
        ``get_optimizer_state_dict`` — which keeps only those two keys — carries both."""
        sd = super().state_dict()
        groups = [g for g in self.param_groups for _ in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for key in sorted(sd["state"]):  # DTensor block envelopes: the full vector (collective)
            g = groups[key]
            sd["state"][key] = sharding.export_state(params[key], _rule(g["envelope"], g["envelope_block"]),
                                                     sd["state"][key])
        base = self.base.state_dict()
        for key, st in base["state"].items():
            sd["state"].setdefault(key, {}).update({BASE_PREFIX + k: v for k, v in st.items()})
        for group, base_group in zip(sd["param_groups"], base["param_groups"]):
            group.update({BASE_PREFIX + k: v for k, v in base_group.items() if k != "params"})
            group[SCHEMA_KEY] = SCHEMA_VERSION
            group[RULE_KEY] = self.identity()
        sd[SCHEMA_KEY] = SCHEMA_VERSION
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a wrapper state dict of the same base optimizer class. The wrapper's own groups
        and state (envelope, step) are checked and converted before anything is replaced; the
        base optimizer's part goes to its own ``load_state_dict`` (which checks what it checks)."""
        schema_of(state_dict)
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, optimizer has {len(self.param_groups)}")
        current = self.identity()
        for i, (g, wg) in enumerate(zip(groups, self.param_groups)):
            saved = saved_identity(g)
            if saved != "sign_conversion_wrapper":  # schema 1 did not record the base's class
                check_identity(i, saved, current, "SignConversionWrapper")
            if len(g["params"]) != len(wg["params"]):
                raise ValueError(f"state_dict param_groups[{i}] has {len(g['params'])} parameters, "
                                 f"the optimizer's has {len(wg['params'])}")

        def split(entry: dict, base: bool) -> dict:
            return {(k[len(BASE_PREFIX):] if base else k): v for k, v in entry.items()
                    if k.startswith(BASE_PREFIX) == base and k not in (SCHEMA_KEY, RULE_KEY)}

        own_groups = [{**split(g, False), "params": g["params"]} for g in groups]
        owners = {}
        for gi, (g, wg) in enumerate(zip(own_groups, self.param_groups)):
            _check_options(g.get("lr"), g.get("envelope"), g.get("envelope_decay"), g.get("envelope_block"),
                           where=f"state_dict param_groups[{gi}] ")
            for j, (saved_id, p) in enumerate(zip(g["params"], wg["params"])):
                owners[saved_id] = (p, g, f"param_groups[{gi}]['params'][{j}]")
        restored = {}
        for key, entry in state_dict["state"].items():
            own = split(entry, False)
            if not own:
                continue
            if key not in owners:
                raise ValueError(f"state_dict['state'] has an entry for parameter id {key!r}, which no "
                                 "saved param group lists")
            p, g, where = owners[key]
            rule = _rule(g["envelope"], g["envelope_block"])
            own = {k: sharding.full(v) for k, v in own.items()}  # DTensors: gathered
            check_entry(f"state_dict['state'][{key!r}] ({where})", rule, sharding.real_shape(p), own, 1)
            restored[p] = sharding.shard_state(p, rule, restore_entry(rule, own, 1, "fp32", p.device))
        self.base.load_state_dict({
            "state": {k: split(st, True) for k, st in state_dict["state"].items() if split(st, True)},
            "param_groups": [{**split(g, True), "params": g["params"]} for g in groups]})
        # torch's load would cast state to the param dtype: the checked ``restored`` replaces it.
        super().load_state_dict({"state": {}, "param_groups": own_groups})
        for p, entry in restored.items():
            self.state[p] = entry

"""Stochastic-sign conversion of any ``torch.optim.Optimizer`` (arXiv 2604.15416).

Each step the base optimizer proposes a displacement, which becomes the base direction
``d = (p_before - p_after) / lr_base``; the wrapper then steps ``p <- p_before - lr*S_B(d)``
with the running envelope ``B <- max(B*envelope_decay, |d|)`` (per element, row, block or
tensor), so ``E[dp] = -lr*d/B``. The base keeps its own state and weight decay.

Cost: one copy of every stepped parameter during ``step`` (freed after it), plus the envelope
(fp32; one value per element for ``envelope="element"``) and a step counter per parameter;
time is the base step plus one copy, one subtraction and the stochastic sign.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import reference, sharding
from .optimizer import SCHEMA_KEY, SCHEMA_VERSION, _default_seed
from .philox import WORD_SIGN, derive_key, element_words, uniform_from_word
from .rule import ENVELOPES, UpdateRule, _real
from .scalars import f32


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


class SignConversionWrapper(Optimizer):
    """Wrap ``optimizer``; ``lr`` is the sign step (default: each base group's lr)."""

    def __init__(self, optimizer: Optimizer, lr: float | None = None, *, envelope: str = "element",
                 envelope_decay: float = 1.0, envelope_block: int = 256,
                 seed: int | None = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if envelope not in ENVELOPES:
            raise ValueError(f"envelope must be one of {ENVELOPES}, got {envelope!r}")
        _real("envelope_decay", envelope_decay, 0.0, 1.0, lo_open=True)
        if lr is not None:
            _real("lr", lr, 0.0)
        if isinstance(envelope_block, bool) or not isinstance(envelope_block, int) or envelope_block < 1:
            raise ValueError(f"envelope_block must be a positive int, got {envelope_block!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        for g in optimizer.param_groups:
            _check_params(g["params"], _rule(envelope, envelope_block))
        self.base = optimizer
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
        the wrapper (sign lr: the constructor's ``lr`` or the base group's lr)."""
        if not getattr(self, "_forward_groups", False):
            super().add_param_group(param_group)
            return
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        _check_params(params, _rule(self.defaults["envelope"], self.defaults["envelope_block"]))
        self.base.add_param_group({**param_group, "params": params})
        bg = self.base.param_groups[-1]
        super().add_param_group({"params": list(bg["params"]),
                                 "lr": bg["lr"] if self._sign_lr is None else self._sign_lr})

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
        for wg, bg, stepped in zip(self.param_groups, self.base.param_groups, work):
            rule = UpdateRule(family="stochastic", base="sgd", envelope=wg["envelope"],
                              envelope_block=wg["envelope_block"])
            before = {id(p): p0 for p, p0 in stepped}
            for p in wg["params"]:
                if id(p) in before:
                    self._sign_step(rule, wg, float(bg["lr"]), p, before[id(p)], index)
                index += 1
        return loss

    def _sign_step(self, rule: UpdateRule, group: dict, base_lr: float, p: Tensor, p0: Tensor,
                   index: int) -> None:
        st = self.state[p]
        real = torch.view_as_real if p.is_complex() else (lambda t: t)
        offset = sharding.index_offset(p)  # DTensor: step the local shard (signopt.sharding)
        pr, p0r, gr = real(sharding.local(p)), real(sharding.local(p0)), real(sharding.local(p.grad))
        if pr.numel() == 0 and not sharding.is_dtensor(p):
            return
        if not st:
            st["G"] = torch.zeros(rule.envelope_shape(pr.shape), dtype=torch.float32, device=p.device)
            st["step"] = torch.tensor(0, dtype=torch.int64)
            sharding.wrap_state(p, rule, st)
        st["step"] += 1
        if pr.numel() == 0:  # an empty shard still counts the step, like its peers
            return
        G = sharding.local(st["G"])
        key = derive_key(group["seed"], int(st["step"].item()), index)
        d = (p0r.to(torch.float32) - pr.to(torch.float32)) / f32(base_lr)
        bad = ~torch.isfinite(d) | ~torch.isfinite(gr)
        d = torch.where(bad, torch.zeros_like(d), d)
        env = torch.fmax(G * f32(group["envelope_decay"]), reference.reduce_envelope(rule, d.abs()))
        if rule.envelope == "element":
            env = torch.where(bad, G, env)
        G.copy_(env)
        idx = torch.arange(pr.numel(), device=p.device, dtype=torch.int64) + offset
        uniform = uniform_from_word(element_words(key, idx)[WORD_SIGN]).reshape(pr.shape)
        s = reference.stochastic_sign(d, reference.expand_envelope(rule, env, pr.shape), uniform)
        lr = group["lr"]
        lr32 = lr.to(torch.float32) if isinstance(lr, Tensor) else f32(lr)
        new = p0r.to(torch.float32) - lr32 * s
        pr.copy_(torch.where(bad, p0r.to(torch.float32), new).to(pr.dtype))

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        groups = [g for g in self.param_groups for _ in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for key in sorted(sd["state"]):  # DTensor block envelopes: the full vector (collective)
            g = groups[key]
            sd["state"][key] = sharding.export_state(params[key], _rule(g["envelope"], g["envelope_block"]),
                                                     sd["state"][key])
        sd["base"] = self.base.state_dict()
        sd[SCHEMA_KEY] = SCHEMA_VERSION
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get(SCHEMA_KEY) != SCHEMA_VERSION:
            raise ValueError(f"state_dict has {SCHEMA_KEY}={state_dict.get(SCHEMA_KEY)!r}; "
                             f"expected {SCHEMA_VERSION}")
        if "base" not in state_dict:
            raise ValueError("state_dict has no 'base' entry (the wrapped optimizer's state)")
        own = {k: v for k, v in state_dict.items() if k not in ("base", SCHEMA_KEY)}
        self.base.load_state_dict(state_dict["base"])
        super().load_state_dict(own)
        # torch's default load casts state to the param dtype (lossy for bf16/fp16 params):
        # restore from the saved tensors instead.
        params = [(p, g) for g in self.param_groups for p in g["params"]]
        for key, saved in own["state"].items():
            p, g = params[int(key)]
            restored = {
                "G": sharding.full(saved["G"]).detach().to(device=p.device, dtype=torch.float32).clone(),
                "step": saved["step"].detach().to(device="cpu", dtype=torch.int64).clone(),
            }
            self.state[p] = sharding.shard_state(p, _rule(g["envelope"], g["envelope_block"]), restored)

"""The fused C++/CUDA backend: ``torch.ops.signopt.step`` (``csrc/``), one call per param
group and (device, parameter dtype, state format) combination over all its tensors.

``load()`` builds the extension just in time (cached; see :mod:`signopt.build`), so a group
resolved to ``"cpp"`` never compiles inside ``step``.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from .. import build, state_format
from ..rule import UpdateRule
from ..scalars import GroupScalars
from . import BackendUnavailable
from .slot import ParamSlot
from .torch_backend import real_view

log = logging.getLogger("signopt")

# Rule kinds and storage formats: the enums of csrc/rules.h and csrc/cpu_kernels.h.
LION_KINDS = {"l1": 2, "l2sq": 3, "huber": 4, "l2": 5, "row_l2": 5, "lp": 6}
STOCHASTIC_KINDS = {"sgd": 7, "momentum": 8, "lion": 9, "adamw": 10}
PARAM_FMT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
STATE_FMT = {"fp32": 0, "bf16": 1, "fp8_e4m3": 3, "fp8_e5m2": 4}
SUPPORTED_DEVICES = ("cpu", "cuda")
MAX_CUDA_FP8_BLOCK = 2048  # csrc/cuda_launch.h: FP8 blocks are staged in shared memory


def kind_of(rule: UpdateRule) -> int:
    """The kernel kind of ``rule`` (``ValueError`` for a rule without a fused kernel)."""
    if rule.family == "sign":
        return 0
    if rule.family == "signum":
        return 1
    if rule.family == "lion":
        if rule.kappa not in LION_KINDS:
            raise ValueError(f"kappa {rule.kappa!r} has no fused kernel")
        return LION_KINDS[rule.kappa]
    return STOCHASTIC_KINDS[rule.base]


def _real_dtype(t: Tensor) -> torch.dtype:
    return real_view(t).dtype if t.is_complex() else t.dtype


def _rows(shape: torch.Size) -> int:
    """Rows of ``kappa.rows_view`` for a tensor of ``shape``."""
    return shape[0] if len(shape) >= 2 else 1


def _seglen(rule: UpdateRule, p: Tensor) -> int:
    """Length of the reduction segment of ``p`` (its real view), 0 when the rule has none."""
    n = p.numel()
    if rule.family == "lion":
        if rule.kappa == "row_l2":
            return n // _rows(p.shape)
        return n if rule.kappa in ("l2", "lp") else 0
    if rule.family != "stochastic" or rule.envelope == "element":
        return 0
    if rule.envelope == "row":
        return n // _rows(p.shape)
    return rule.envelope_block if rule.envelope == "block" else n


class CppBackend:
    """Fused kernels for every built-in rule on CPU (and CUDA when built with it)."""

    name = "cpp"

    def __init__(self, has_cuda: bool) -> None:
        self.has_cuda = has_cuda

    def unsupported(self, rule: UpdateRule, params: list[Tensor]) -> str | None:
        if rule.kappa_fn is not None:
            return "a callable kappa runs on the torch backend only"
        try:
            kind_of(rule)
        except ValueError as exc:
            return str(exc)
        if rule.state_dtype not in STATE_FMT:
            return f"state_dtype {rule.state_dtype!r} has no fused kernel"
        for i, p in enumerate(params):
            if p.device.type not in SUPPORTED_DEVICES:
                return f"params[{i}] is on {p.device}; the cpp backend runs on CPU and CUDA"
            if p.device.type == "cuda" and not self.has_cuda:
                return "the signopt extension was built without CUDA kernels"
            if (p.device.type == "cuda" and rule.state_dtype.startswith("fp8")
                    and rule.state_block > MAX_CUDA_FP8_BLOCK):
                return f"FP8 state on CUDA needs state_block <= {MAX_CUDA_FP8_BLOCK}"
            if _real_dtype(p) not in PARAM_FMT:
                return (f"params[{i}] has dtype {p.dtype}; the cpp backend supports float32, bfloat16, "
                        "float16 (and complex64/complex32 through their real views)")
            if not p.is_contiguous():
                return f"params[{i}] is not contiguous"
            if p.grad is not None and p.grad.dtype != p.dtype:
                return f"params[{i}] has dtype {p.dtype} but its gradient has dtype {p.grad.dtype}"
        return None

    def step(self, rule: UpdateRule, slots: list[ParamSlot], scalars: GroupScalars) -> Tensor | None:
        kind = kind_of(rule)
        names = rule.state_names()
        calls: dict[tuple, list[tuple[ParamSlot, Tensor, Tensor]]] = {}
        for slot in slots:
            p = real_view(slot.param)
            if p.numel() == 0:
                continue
            g = real_view(slot.grad)
            elem = [n for n in names if not (n == "G" and rule.envelope != "element")]
            sfmt = STATE_FMT[state_format.format_of(slot.state[elem[0]])] if elem else 0
            calls.setdefault((p.device, PARAM_FMT[p.dtype], sfmt), []).append((slot, p, g))
        counts = []
        for (device, pfmt, sfmt), items in calls.items():
            counts.append(self._call(rule, kind, device, pfmt, sfmt, items, scalars))
        if not counts:
            return None
        return counts[0] if len(counts) == 1 else torch.stack(counts).sum()

    def _call(self, rule: UpdateRule, kind: int, device: torch.device, pfmt: int, sfmt: int,
              items: list[tuple[ParamSlot, Tensor, Tensor]], sc: GroupScalars) -> Tensor:
        blocked = sfmt >= 3
        stochastic = rule.family == "stochastic"
        has_m = "m" in rule.state_names()
        has_v = "v" in rule.state_names()
        elem_env = stochastic and rule.envelope == "element"
        params, grads, m, v, env, m_s, v_s, env_s = [], [], [], [], [], [], [], []
        keys, offsets, seglens, bias = [], [], [], []
        for slot, p, g in items:
            params.append(p)
            grads.append(g if g.is_contiguous() else g.contiguous())
            st = slot.state
            if has_m:
                m.append(st["m"])
                if blocked:
                    m_s.append(st["m" + state_format.SCALE_SUFFIX])
            if has_v:
                v.append(st["v"])
                if blocked:
                    v_s.append(st["v" + state_format.SCALE_SUFFIX])
            if stochastic:
                env.append(st["G"])
                if elem_env and blocked:
                    env_s.append(st["G" + state_format.SCALE_SUFFIX])
            keys.extend(slot.key if slot.key is not None else (0, 0))
            offsets.append(int(slot.index_offset))
            seglens.append(_seglen(rule, p))
            bias.extend(slot.bias if slot.bias is not None else (1.0, 1.0))
        lr_t = sc.lr.to(device=device, dtype=torch.float32) if isinstance(sc.lr, Tensor) else None
        decay_t = sc.decay.to(device=device, dtype=torch.float32) if isinstance(sc.decay, Tensor) else None
        config = [kind, pfmt, sfmt, rule.state_block, int(rule.maximize), int(rule.cautious),
                  int(rule.envelope_source == "grad"), 0 if rule.envelope == "element" else 1,
                  int(rule.state_rounding == "stochastic"), int(rule.param_rounding == "stochastic")]
        hyper = [0.0 if lr_t is not None else float(sc.lr), 0.0 if decay_t is not None else float(sc.decay),
                 sc.l2, sc.beta1, sc.omb1, sc.beta2, sc.omb2, sc.eps, sc.huber_delta, sc.p - 1.0,
                 sc.envelope_decay, sc.p, (sc.p - 1.0) / sc.p]
        inv_scale = None if sc.inv_scale is None else sc.inv_scale.to(device=device, dtype=torch.float32)
        found_inf = None if sc.found_inf is None else sc.found_inf.to(device=device, dtype=torch.float32)
        return torch.ops.signopt.step(params, grads, m, v, env, m_s, v_s, env_s, config, hyper, keys,
                                      offsets, seglens, bias, lr_t, decay_t, inv_scale, found_inf)


def load() -> CppBackend:
    """Build (once, cached) and load the extension; ``BackendUnavailable`` with the reason."""
    try:
        build.load()
    except build.BuildUnavailable as exc:
        log.warning("signopt: the cpp backend is unavailable (%s); backend='auto' uses the torch "
                    "backend", exc)
        raise BackendUnavailable(str(exc)) from exc
    return CppBackend(has_cuda=build.with_cuda())

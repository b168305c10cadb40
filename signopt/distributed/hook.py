"""``sign_compress_hook``: a DDP communication hook sending one bit per gradient element.

Shaped like torch's ``powerSGD_hook``/``PowerSGDState``::

    state = SignCompressionState(process_group=None, module=model, mode="error_feedback")
    ddp_model.register_comm_hook(state, sign_compress_hook)

Per bucket each rank all-gathers ``ceil(d/8)`` bytes of signs plus 4 bytes per scale (one per
bucket, or one per tensor) instead of all-reducing ``4d`` bytes (fp32); the math is in :mod:`signopt.distributed.compression`. The hook's result
replaces the averaged gradient, so any optimizer (signopt or ``torch.optim``) steps on it.

Per-rank buffers (EF errors, majority-vote momenta) are kept per parameter and keyed by the
parameter's name in ``module``: DDP rebuilds its buckets after the first iteration (and again
in every resumed run), so bucket indices are not stable keys, names are. Save them with
``state.state_dict()`` on every rank and restore with ``load_state_dict`` (tensors, strings
and numbers only: ``torch.load(..., weights_only=True)`` reads them).
"""
import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import compression as C

SCHEMA_KEY = "signopt_comm_schema"
SCHEMA_VERSION = 1


class SignCompressionState:
    """Hyperparameters and per-rank buffers of :func:`sign_compress_hook`.

    ``mode``: ``"error_feedback"`` (EF-SignSGD) or ``"majority_vote"``; ``momentum`` (majority
    vote only): each rank votes with ``sign(m)`` of its local EMA ``m <- beta*m + (1-beta)*g``
    (0 votes with ``sign(g)``). ``module`` names the parameters (a DDP wrapper is unwrapped).
    ``granularity``: one scale per ``"bucket"`` (results depend on DDP's bucket layout, which
    DDP rebuilds after the first iteration of every run, so a resumed run repeats the
    uninterrupted one bit for bit only when both see the same buckets) or per ``"tensor"``
    (4 more bytes per parameter tensor; results independent of bucketing).
    """

    __slots__ = ("process_group", "mode", "momentum", "granularity", "names", "errors",
                 "momenta", "iter", "bytes_sent")

    def __init__(self, process_group: dist.ProcessGroup | None, module: nn.Module,
                 mode: str = "error_feedback", momentum: float = 0.0,
                 granularity: str = "bucket") -> None:
        if mode not in C.MODES:
            raise ValueError(f"mode must be one of {C.MODES}, got {mode!r}")
        if granularity not in C.GRANULARITIES:
            raise ValueError(f"granularity must be one of {C.GRANULARITIES}, got {granularity!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
                or not math.isfinite(momentum) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be a float in [0, 1), got {momentum!r}")
        if mode == "error_feedback" and momentum != 0.0:
            raise ValueError("momentum applies to mode='majority_vote' only; error feedback sends "
                             "the gradient (use the optimizer's momentum)")
        if not isinstance(module, nn.Module):
            raise ValueError(f"module must be the nn.Module whose parameters DDP reduces, got "
                             f"{type(module).__name__}")
        inner = module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
        self.process_group = process_group
        self.mode = mode
        self.momentum = float(momentum)
        self.granularity = granularity
        self.names: dict[int, str] = {id(p): n for n, p in inner.named_parameters()}
        self.errors: dict[str, Tensor] = {}
        self.momenta: dict[str, Tensor] = {}
        self.iter = 0
        self.bytes_sent = 0

    # --------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        """Everything but the process group (not serialisable), like ``PowerSGDState``."""
        return {s: getattr(self, s) for s in self.__slots__ if s != "process_group"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.process_group = None  # the default group
        for slot, value in state.items():
            setattr(self, slot, value)

    # ------------------------------------------------------------- checkpoint
    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.process_group)

    def state_dict(self) -> dict[str, Any]:
        """This rank's buffers (cloned, contiguous) and the settings they belong to."""
        return {SCHEMA_KEY: SCHEMA_VERSION, "mode": self.mode, "momentum": self.momentum,
                "granularity": self.granularity, "world_size": self.world_size, "iter": self.iter,
                "errors": {n: t.detach().clone() for n, t in self.errors.items()},
                "momenta": {n: t.detach().clone() for n, t in self.momenta.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore buffers saved by :meth:`state_dict` (same mode, momentum and world size)."""
        if state_dict.get(SCHEMA_KEY) != SCHEMA_VERSION:
            raise ValueError(f"state_dict has {SCHEMA_KEY}={state_dict.get(SCHEMA_KEY)!r}; "
                             f"expected {SCHEMA_VERSION}")
        for key in ("mode", "momentum", "granularity", "world_size"):
            mine = getattr(self, key)
            if state_dict[key] != mine:
                raise ValueError(f"state_dict was saved with {key}={state_dict[key]!r}, this state "
                                 f"has {key}={mine!r}; per-rank buffers do not carry over")
        known = set(self.names.values())
        for kind in ("errors", "momenta"):
            unknown = sorted(set(state_dict[kind]) - known)
            if unknown:
                raise ValueError(f"state_dict[{kind!r}] names parameters the module does not "
                                 f"have: {unknown[:5]}")
        self.errors = {n: t.detach().clone() for n, t in state_dict["errors"].items()}
        self.momenta = {n: t.detach().clone() for n, t in state_dict["momenta"].items()}
        self.iter = int(state_dict["iter"])

    # --------------------------------------------------------------- buckets
    def _layout(self, bucket: dist.GradBucket) -> list[tuple[str, int, int]]:
        """``(name, offset, numel)`` of each parameter in the bucket's flat buffer."""
        buf = bucket.buffer()
        layout = []
        for p, g in zip(bucket.parameters(), bucket.gradients()):
            if id(p) not in self.names:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} in the DDP bucket is not "
                                 "in SignCompressionState's module; pass the module DDP wraps")
            offset = (g.data_ptr() - buf.data_ptr()) // buf.element_size()
            layout.append((self.names[id(p)], offset, g.numel()))
        return layout

    def _segments(self, layout: list[tuple[str, int, int]], numel: int) -> list[int]:
        """Sizes of the consecutive scale segments covering the bucket's flat buffer."""
        if self.granularity == "bucket":
            return [numel]
        sizes, pos = [], 0
        for _, off, n in sorted(layout, key=lambda x: x[1]):
            if off > pos:
                sizes.append(off - pos)  # a gap in the buffer gets its own scale
            sizes.append(n)
            pos = off + n
        if pos < numel:
            sizes.append(numel - pos)
        return sizes

    def _gather(self, store: dict[str, Tensor], layout: list[tuple[str, int, int]], numel: int,
                dtype: torch.dtype, device: torch.device) -> Tensor:
        flat = torch.zeros(numel, dtype=dtype, device=device)
        for name, off, n in layout:
            if name in store:
                flat[off:off + n] = store[name].reshape(-1).to(dtype)
        return flat

    @staticmethod
    def _scatter(store: dict[str, Tensor], layout: list[tuple[str, int, int]], flat: Tensor) -> None:
        for name, off, n in layout:
            store[name] = flat[off:off + n]


def sign_compress_hook(state: SignCompressionState,
                       bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """Compress this rank's bucket to signs + scales, all-gather, decode the mean."""
    buf = bucket.buffer()
    group = state.process_group
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    dtype = C.compute_dtype(buf.dtype)
    g = buf.to(dtype)
    layout = state._layout(bucket)
    sizes = state._segments(layout, buf.numel())
    if state.mode == "error_feedback":
        e = state._gather(state.errors, layout, buf.numel(), dtype, buf.device)
        scales, bits, new_buffer = C.ef_local(g, e, sizes)
        store = state.errors
    else:
        m = state._gather(state.momenta, layout, buf.numel(), dtype, buf.device)
        beta = state.momentum
        new_buffer = m * beta + g * (1.0 - beta) if beta else g
        scales, bits = C.segment_scales(new_buffer, sizes), C.vote_bits(new_buffer, rank)
        store = state.momenta
    payload = C.encode(scales, bits)
    gathered = torch.empty(world * payload.numel(), dtype=torch.uint8, device=buf.device)
    fut = dist.all_gather_single(gathered, payload, group=group, async_op=True).get_future()
    state.bytes_sent += (world - 1) * payload.numel()
    if bucket.is_last():
        state.iter += 1

    old_buffer = e if state.mode == "error_feedback" else m
    keeps_buffer = state.mode == "error_feedback" or state.momentum != 0.0

    def decode(_: torch.futures.Future) -> Tensor:
        all_scales, all_bits = C.decode(gathered, world, buf.numel(), len(sizes), dtype)
        if state.mode == "error_feedback":
            out = C.ef_combine(all_scales, all_bits, sizes)
        else:
            out = C.vote_combine(all_scales, all_bits, sizes)
        if keeps_buffer:  # a non-finite scale anywhere: every rank keeps its old buffer
            ok = torch.isfinite(all_scales).all()
            state._scatter(store, layout, torch.where(ok, new_buffer, old_buffer))
        buf.copy_(out)
        return buf

    return fut.then(decode)

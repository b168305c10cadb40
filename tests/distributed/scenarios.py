"""What each rank runs (imported by :mod:`dist_workers`; the tests import the shared model and
data helpers from here for their single-process replays)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

IN, HID, OUT = 6, 16, 3
LR = 0.05


def make_mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HID), nn.Tanh(), nn.Linear(HID, OUT)).to(dtype)


def batch(rank: int, step: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1000 * rank + step)
    return (torch.randn(8, IN, generator=gen, dtype=dtype),
            torch.randn(8, OUT, generator=gen, dtype=dtype))


def local_grads(model: nn.Module, rank: int, step: int) -> list[Tensor]:
    """Gradients of this rank's loss at the model's current parameters (no communication)."""
    model.zero_grad(set_to_none=True)
    x, y = batch(rank, step, next(model.parameters()).dtype)
    nn.functional.mse_loss(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def flat(tensors) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


# ---------------------------------------------------------------- DDP + hook
def _ddp(mode: str, momentum: float, bucket_cap_mb: float, dtype: torch.dtype = torch.float32,
         granularity: str = "bucket"):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from signopt.distributed import SignCompressionState, sign_compress_hook
    model = make_mlp(dtype=dtype)
    ddp = DDP(model, bucket_cap_mb=bucket_cap_mb)
    state = SignCompressionState(None, model, mode=mode, momentum=momentum,
                                 granularity=granularity)
    ddp.register_comm_hook(state, sign_compress_hook)
    return model, ddp, state


def _train(ddp, opt, rank: int, steps: range, crash_at: int | None = None) -> None:
    dtype = next(ddp.parameters()).dtype
    for t in steps:
        x, y = batch(rank, t, dtype)
        opt.zero_grad(set_to_none=True)
        if crash_at == t:
            raise RuntimeError(f"rank {rank} crashes on purpose at step {t}")
        nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()


def ddp_trajectory(rank: int, world: int, out: Path, mode: str, momentum: float = 0.0,
                   steps: int = 6, dtype: str = "float32", granularity: str = "bucket") -> dict:
    """Plain SGD on the hook's output, one bucket; record x_t, e_t and the local gradients."""
    dt = getattr(torch, dtype)
    model, ddp, state = _ddp(mode, momentum, bucket_cap_mb=100.0, dtype=dt, granularity=granularity)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    names = [n for n, _ in model.named_parameters()]
    rec = {"x": [], "e": [], "g": []}
    for t in range(steps):
        rec["x"].append(flat(model.parameters()))
        rec["e"].append(flat(state.errors[n] if n in state.errors else torch.zeros_like(p)
                             for n, p in model.named_parameters()))
        probe = make_mlp(dtype=dt)
        probe.load_state_dict(model.state_dict())
        rec["g"].append(flat(local_grads(probe, rank, t)))
        _train(ddp, opt, rank, range(t, t + 1))
    rec["x"].append(flat(model.parameters()))
    rec["e"].append(flat(state.errors[n] if n in state.errors else torch.zeros_like(p)
                         for n, p in model.named_parameters()))
    return {"names": names, **{k: torch.stack(v) for k, v in rec.items()},
            "bytes_sent": state.bytes_sent, "iter": state.iter}


def _optimizer(kind: str, params):
    import signopt
    if kind == "lion":
        return signopt.Lion(params, lr=1e-3, weight_decay=0.1, seed=3, backend="torch")
    if kind == "sgd_momentum":
        return torch.optim.SGD(params, lr=LR, momentum=0.9)
    raise ValueError(kind)


def ddp_resume(rank: int, world: int, out: Path, mode: str, optimizer: str, momentum: float = 0.0,
               steps: int = 6, split: int = 3, granularity: str = "tensor") -> dict:
    """Uninterrupted run vs save at ``split`` + fresh objects + load (weights_only) + continue.
    Per-tensor scales: tiny buckets, so DDP rebuilds them and the resumed run starts from the
    initial layout; per-bucket scales: one bucket (results depend on the bucket layout)."""
    cap = 0.0002 if granularity == "tensor" else 100.0
    model, ddp, state = _ddp(mode, momentum, cap, granularity=granularity)
    opt = _optimizer(optimizer, model.parameters())
    _train(ddp, opt, rank, range(steps))
    straight = flat(model.parameters())

    model, ddp, state = _ddp(mode, momentum, cap, granularity=granularity)
    opt = _optimizer(optimizer, model.parameters())
    _train(ddp, opt, rank, range(split))
    path = out / f"ckpt{rank}.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict()}, path)
    saved_keys = sorted(state.errors) + sorted(state.momenta)
    model, ddp, state = _ddp(mode, momentum, cap, granularity=granularity)
    opt = _optimizer(optimizer, model.parameters())
    ckpt = torch.load(path, weights_only=True)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    state.load_state_dict(ckpt["hook"])
    _train(ddp, opt, rank, range(split, steps))
    resumed = flat(model.parameters())

    model, ddp, state = _ddp(mode, momentum, cap, granularity=granularity)  # resume without the hook state: differs
    opt = _optimizer(optimizer, model.parameters())
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    _train(ddp, opt, rank, range(split, steps))
    forgot = flat(model.parameters())
    return {"straight": straight, "resumed": resumed, "forgot": forgot, "keys": saved_keys}


def ddp_crash(rank: int, world: int, out: Path, crash_rank: int = 1, crash_at: int = 2) -> dict:
    """``crash_rank`` raises before its backward at step ``crash_at``; the others block in the
    hook's all-gather until the harness kills them."""
    model, ddp, state = _ddp("error_feedback", 0.0, 100.0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    _train(ddp, opt, rank, range(4), crash_at=crash_at if rank == crash_rank else None)
    return {"finished": True}


def suite(rank: int, world: int, out: Path, runs: list[list]) -> list:
    """Several scenarios in one process group (process start-up dominates test time):
    ``runs`` is a list of ``[scenario_name, kwargs]``."""
    results = []
    for name, kwargs in runs:
        results.append(globals()[name](rank, world, out, **kwargs))
        dist.barrier()
    return results


# ---------------------------------------------------------------------- FSDP2
FIN, FHID, FOUT = 16, 64, 7


def make_fsdp_model(bias: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FIN, FHID, bias=bias), nn.Tanh(), nn.Linear(FHID, FOUT, bias=bias))


def fsdp_batch(step: int) -> tuple[Tensor, Tensor]:
    """The same batch on every rank, so the reduce-scattered mean gradient is exact."""
    gen = torch.Generator().manual_seed(77 + step)
    return torch.randn(8, FIN, generator=gen), torch.randn(8, FOUT, generator=gen)


def shard(model: nn.Module, world: int) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def build_optimizer(spec: dict, params):
    import signopt
    spec = dict(spec)
    name = spec.pop("optimizer")
    if name == "wrapper":
        return signopt.SignConversionWrapper(torch.optim.AdamW(params, lr=1e-2), seed=5, **spec)
    if str(spec.get("kappa", "")).startswith("callable"):
        def sign(c: Tensor) -> Tensor:
            return torch.sign(c)
        sign.elementwise = spec["kappa"].endswith(":elementwise")
        spec["kappa"] = sign
    return getattr(signopt, name)(params, **spec)


def train_steps(model: nn.Module, opt, steps) -> None:
    for t in steps:
        x, y = fsdp_batch(t)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def full_value(v):
    from signopt import sharding
    v = sharding.full(v)
    return v.detach().clone() if isinstance(v, Tensor) else v


def full_state(opt) -> dict:
    """Every state tensor at full size (through state_dict(), collective)."""
    sd = opt.state_dict()
    return {int(k): {n: full_value(v) for n, v in st.items()} for k, st in sd["state"].items()}


def fsdp_equal(rank: int, world: int, out: Path, specs: list[dict], steps: int = 3) -> list[dict]:
    """Each spec: FSDP2-sharded run vs an unsharded run of the same optimizer on every rank."""
    results = []
    for spec in specs:
        spec = dict(spec)
        bias = spec.pop("bias", True)
        ref_model = make_fsdp_model(bias)
        model = shard(make_fsdp_model(bias), world)
        from signopt import build
        if spec.get("backend") == "cpp" and not build.is_built():  # never compile in a test
            results.append({"skipped": "the C++ extension is not built for the current sources"})
            continue
        try:
            opt = build_optimizer(spec, model.parameters())
        except ValueError as exc:
            results.append({"refused": str(exc)})
            continue
        ref = build_optimizer(spec, ref_model.parameters())
        train_steps(model, opt, range(steps))
        train_steps(ref_model, ref, range(steps))
        params = [full_value(p) for p in model.parameters()]
        ref_params = [p.detach().clone() for p in ref_model.parameters()]
        state, ref_state = full_state(opt), full_state(ref)
        results.append({"params": params, "ref_params": ref_params, "state": state,
                        "ref_state": ref_state, "backends": getattr(opt, "backends", [])})
    return results


def fsdp_step_refusal(rank: int, world: int, out: Path) -> dict:
    """Switching a group to a reducing option after construction fails at step, touching nothing."""
    import signopt
    model = shard(make_fsdp_model(), world)
    opt = signopt.Lion(model.parameters(), lr=1e-2, seed=1, backend="torch")
    train_steps(model, opt, range(1))
    before = [full_value(p) for p in model.parameters()]
    opt.param_groups[0]["cautious"] = True
    x, y = fsdp_batch(5)
    nn.functional.mse_loss(model(x), y).backward()
    try:
        opt.step()
        message = ""
    except ValueError as exc:
        message = str(exc)
    after = [full_value(p) for p in model.parameters()]
    return {"message": message, "unchanged": all(torch.equal(a, b) for a, b in zip(before, after))}


# ----------------------------------------------------------------------- DCP
DCP_SPECS = {
    "lion_fp8": {"optimizer": "Lion", "lr": 1e-2, "weight_decay": 0.1, "seed": 1,
                 "state_dtype": "fp8_e4m3", "state_block": 64, "fp8_min_numel": 256},
    "stosign_e5m2": {"optimizer": "StoSignSGD", "lr": 1e-2, "seed": 2, "state_dtype": "fp8_e5m2",
                     "state_block": 64, "fp8_min_numel": 256, "state_rounding": "stochastic"},
    "conversion_block": {"optimizer": "SignConversion", "lr": 1e-2, "seed": 3, "base": "adamw",
                         "envelope": "block", "envelope_block": 64, "bias": False},
    "wrapper_adamw": {"optimizer": "wrapper", "envelope": "block", "envelope_block": 64, "bias": False},
    "lion_mxfp8": {"optimizer": "Lion", "lr": 1e-2, "weight_decay": 0.1, "seed": 4,
                   "state_dtype": "mxfp8_e4m3", "state_block": 64, "fp8_min_numel": 256},
    "signum_mxfp4": {"optimizer": "Signum", "lr": 1e-2, "seed": 5, "state_dtype": "fp4_e2m1",
                     "fp8_min_numel": 256, "state_rounding": "stochastic"},
}


def _dcp_setup(name: str, world: int, sharded: bool, backend: str):
    spec = dict(DCP_SPECS[name])
    bias = spec.pop("bias", True)
    model = make_fsdp_model(bias)
    if sharded:
        model = shard(model, world)
    opt = build_optimizer({**spec, "backend": backend}, model.parameters())
    return model, opt


def dcp_save(rank: int, world: int, out: Path, ckpt: str, names: list[str], before: int = 2,
             after: int = 2, backend: str = "torch") -> dict:
    """Train ``before`` steps sharded, save model + optimizer with DCP, train ``after`` more:
    the uninterrupted result every load is compared with."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    finals = {}
    for name in names:
        model, opt = _dcp_setup(name, world, True, backend)
        train_steps(model, opt, range(before))
        dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
                 checkpoint_id=f"{ckpt}/{name}")
        at_save = full_state(opt)
        train_steps(model, opt, range(before, before + after))
        finals[name] = {"params": [full_value(p) for p in model.parameters()], "state": at_save}
    return finals


def dcp_load(rank: int, world: int, out: Path, ckpt: str, names: list[str], before: int = 2,
             after: int = 2, sharded: bool = True, backend: str = "torch") -> dict:
    """Fresh model + optimizer on ``world`` ranks (FSDP2, or plain), DCP load, train ``after``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    finals = {}
    for name in names:
        model, opt = _dcp_setup(name, world, sharded, backend)
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
        dcp.load(state, checkpoint_id=f"{ckpt}/{name}")
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optim"])
        loaded = full_state(opt)
        train_steps(model, opt, range(before, before + after))
        finals[name] = {"params": [full_value(p) for p in model.parameters()], "state": loaded}
    return finals


def dcp_load_refusals(rank: int, world: int, out: Path) -> dict:
    """``set_optimizer_state_dict`` under FSDP2 with a state dict of another rule, and with one
    whose state tensor has the wrong shape: each raises ``ValueError`` and the optimizer's
    state and the parameters stay as they were (compared at full size)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    import signopt
    model = shard(make_fsdp_model(), world)
    opt = signopt.Lion(model.parameters(), lr=1e-2, seed=1, backend="torch", **FP8_SPEC)
    train_steps(model, opt, range(2))
    other = shard(make_fsdp_model(), world)
    signum = signopt.Signum(other.parameters(), lr=1e-2, seed=1, backend="torch", **FP8_SPEC)
    train_steps(other, signum, range(2))
    wrong_rule = get_optimizer_state_dict(other, signum)
    wrong_shape = get_optimizer_state_dict(model, opt)
    first = sorted(wrong_shape["state"])[0]
    wrong_shape["state"][first]["m"] = torch.zeros(5, dtype=torch.float8_e4m3fn)
    results = {}
    for label, sd in (("wrong_rule", wrong_rule), ("wrong_shape", wrong_shape)):
        before = full_state(opt), [full_value(p) for p in model.parameters()]
        try:
            set_optimizer_state_dict(model, opt, sd)
            message = ""
        except ValueError as exc:
            message = str(exc)
        after = full_state(opt), [full_value(p) for p in model.parameters()]
        same = before[0].keys() == after[0].keys() and all(
            before[0][k].keys() == after[0][k].keys()
            and all(_bits_equal(before[0][k][n], after[0][k][n]) for n in before[0][k]) for k in before[0])
        same = same and all(torch.equal(a, b) for a, b in zip(before[1], after[1]))
        results[label] = {"message": message, "unchanged": same, "first": str(first)}
    return results


def _bits_equal(a, b) -> bool:
    if not isinstance(a, Tensor):
        return a == b
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.element_size() == 1:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return torch.equal(a, b)


FP8_SPEC = {"state_dtype": "fp8_e4m3", "state_block": 64, "fp8_min_numel": 256}


def ddp_nonfinite(rank: int, world: int, out: Path, mode: str = "error_feedback") -> dict:
    """Rank 0's batch holds an inf at step 1: every rank must decode a non-finite gradient (so
    GradScaler would skip) and keep its error buffer."""
    model, ddp, state = _ddp(mode, 0.5 if mode == "majority_vote" else 0.0, 100.0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    _train(ddp, opt, rank, range(1))
    store = state.errors if mode == "error_feedback" else state.momenta
    before = {n: t.clone() for n, t in store.items()}
    x, y = batch(rank, 1)
    if rank == 0:
        x[0, 0] = float("inf")
    opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(ddp(x), y).backward()
    finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    kept = before.keys() == store.keys() and all(torch.equal(before[n], store[n]) for n in before)
    return {"finite": finite, "kept": kept}

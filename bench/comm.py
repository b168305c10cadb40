"""1-bit sign compression for DDP: bytes per step, step time and loss against an fp32 all-reduce.

    python bench/comm.py [--world 2] [--steps 150] [--timing-steps 30]

Starts ``--world`` gloo ranks on this machine (one torch thread each, loopback TCP, a TCPStore
owned by this process so no port is guessed) and measures, for DDP's default fp32 all-reduce
and for ``signopt.distributed.sign_compress_hook`` in its modes:

* bytes each rank puts on the wire per step: the fp32 ring all-reduce sends
  ``2(W-1)/W * 4d``; the hook all-gathers one payload per bucket, ``ceil(d/8)`` bytes of signs
  (zero-padded to a byte) plus 4 bytes per scale (one per bucket, or per tensor), so each rank
  sends ``(W-1) * payload``. The sign bits alone are 32x smaller than the fp32 gradient; the
  table reports the totals with scales and padding, counted from the buckets DDP really built.
* step time (median over ``--timing-steps`` steps after warm-up) of forward + backward
  (communication included) + optimizer step, on an MLP with ~0.5M parameters.
* training loss against steps for a small teacher-student regression, each rank on its own
  data, with and without compression.

Prints a table and writes ``bench/results/comm.txt``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = [  # name, hook mode (None: DDP's fp32 all-reduce), hook options
    ("fp32 all-reduce", None, {}),
    ("sign EF (bucket scale)", "error_feedback", {"granularity": "bucket"}),
    ("sign EF (tensor scale)", "error_feedback", {"granularity": "tensor"}),
    ("sign majority vote", "majority_vote", {"momentum": 0.0, "granularity": "tensor"}),
]
TIMING_WIDTH = 512
LOSS_WIDTH = 64
D_IN, D_OUT = 128, 16


def mlp(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                         nn.Linear(width, D_OUT))


def data(rank: int, step: int, teacher: nn.Module, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(10_000 * rank + step)
    x = torch.randn(batch, D_IN, generator=gen)
    with torch.no_grad():
        y = teacher(x) + 0.01 * torch.randn(batch, D_OUT, generator=gen)
    return x, y


def wrap(model: nn.Module, mode: str | None, options: dict):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from signopt.distributed import SignCompressionState, sign_compress_hook
    ddp = DDP(model)
    state = None
    if mode is not None:
        state = SignCompressionState(None, model, mode=mode, **options)
        ddp.register_comm_hook(state, sign_compress_hook)
    return ddp, state


def bucket_sizes(ddp) -> list[list[int]]:
    """Element counts of each parameter in each of DDP's (rebuilt) buckets."""
    sizes: list[list[int]] = []

    def spy(_state, bucket):
        sizes.append([g.numel() for g in bucket.gradients()])
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut
    return sizes, spy


def wire_bytes(buckets: list[list[int]], mode: str | None, granularity: str, world: int) -> dict:
    """Bytes one rank sends per step (ring algorithms), and the payload it contributes."""
    d = sum(sum(b) for b in buckets)
    if mode is None:
        payload = 4 * d
        return {"payload": payload, "wire": 2 * (world - 1) * payload / world, "signs": 0, "scales": 0, "pad": 0}
    signs = sum(-(-sum(b) // 8) for b in buckets)
    scales = sum(4 * (1 if granularity == "bucket" else len(b)) for b in buckets)
    pad = signs - d / 8
    payload = signs + scales
    return {"payload": payload, "wire": (world - 1) * payload, "signs": d / 8, "scales": scales, "pad": pad}


def worker(rank: int, world: int, port: int, args: argparse.Namespace, queue) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, world + 1, is_master=False, timeout=timedelta(seconds=300))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    try:
        teacher = mlp(LOSS_WIDTH, seed=123)
        out = {}
        for name, mode, options in CONFIGS:
            # layout: DDP's buckets after its first-iteration rebuild
            from torch.nn.parallel import DistributedDataParallel as DDP
            probe = DDP(mlp(TIMING_WIDTH, 0))
            sizes, spy = bucket_sizes(probe)
            probe.register_comm_hook(None, spy)
            for step in range(2):
                sizes.clear()
                x, y = data(rank, step, teacher)
                nn.functional.mse_loss(probe(x), y).backward()
            nbytes = wire_bytes(sizes, mode, options.get("granularity", "bucket"), world)
            nbytes["buckets"] = len(sizes)
            nbytes["numel"] = sum(sum(b) for b in sizes)

            model = mlp(TIMING_WIDTH, 0)
            ddp, state = wrap(model, mode, options)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            times = []
            for step in range(args.timing_steps + 3):
                x, y = data(rank, step, teacher)
                dist.barrier()
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                nn.functional.mse_loss(ddp(x), y).backward()
                opt.step()
                times.append(time.perf_counter() - t0)
            measured = None if state is None else state.bytes_sent / (args.timing_steps + 3)

            model = mlp(LOSS_WIDTH, 1)
            ddp, state = wrap(model, mode, options)
            opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
            losses = []
            for step in range(args.steps + 1):
                x, y = data(rank, step, teacher)
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.mse_loss(ddp(x), y)
                if step < args.steps:
                    loss.backward()
                    opt.step()
                mean = loss.detach().clone()
                dist.all_reduce(mean)
                losses.append(float(mean) / world)
            out[name] = {"bytes": nbytes, "measured": measured, "time": statistics.median(times[3:]),
                         "losses": losses}
        if rank == 0:
            queue.put(out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def machine() -> str:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"torch {torch.__version__}, {os.cpu_count()} CPU cores ({cpu}), gloo over loopback, "
            "1 torch thread per rank")


def report(res: dict, args: argparse.Namespace) -> str:
    lines = [f"# bench/comm.py  world={args.world}  {machine()}", ""]
    first = next(iter(res.values()))["bytes"]
    lines.append(f"bytes per step per rank (timing MLP, {first['numel']} fp32 gradient elements, "
                 f"{first['buckets']} DDP bucket(s); ring algorithms)")
    lines.append(f"{'mode':26s} {'payload B':>11s} {'signs B':>9s} {'scales B':>9s} {'pad B':>6s} "
                 f"{'wire B':>11s} {'vs fp32 payload':>16s} {'vs fp32 wire':>13s} {'hook counted':>13s}")
    base = res["fp32 all-reduce"]["bytes"]
    for name, r in res.items():
        b = r["bytes"]
        counted = "-" if r["measured"] is None else f"{r['measured']:.0f}"
        lines.append(f"{name:26s} {b['payload']:11.0f} {b['signs']:9.1f} {b['scales']:9.0f} {b['pad']:6.2f} "
                     f"{b['wire']:11.0f} {base['payload'] / b['payload']:15.1f}x "
                     f"{base['wire'] / b['wire']:12.1f}x {counted:>13s}")
    lines += ["", f"step time, median of {args.timing_steps} steps (forward + backward with "
              "communication + SGD step)"]
    for name, r in res.items():
        lines.append(f"{name:26s} {1e3 * r['time']:8.2f} ms")
    marks = sorted({0, 10, 25, 50, 100, args.steps} & set(range(args.steps + 1)))
    lines += ["", f"training loss (mean over ranks; MLP width {LOSS_WIDTH}, SGD momentum 0.9, "
              f"lr {args.lr}, teacher-student regression, each rank its own data)"]
    lines.append(f"{'mode':26s} " + " ".join(f"{'step ' + str(m):>10s}" for m in marks))
    for name, r in res.items():
        lines.append(f"{name:26s} " + " ".join(f"{r['losses'][m]:10.4f}" for m in marks))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--timing-steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "comm.txt"))
    args = ap.parse_args()
    if not 2 <= args.world <= 8:
        raise ValueError(f"--world must be in [2, 8], got {args.world}")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    store = dist.TCPStore("127.0.0.1", 0, args.world + 1, is_master=True,
                          timeout=timedelta(seconds=300), wait_for_workers=False)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args.world, store.port, args, queue))
             for r in range(args.world)]
    for p in procs:
        p.start()
    try:
        import queue as queue_mod
        deadline = time.monotonic() + 1800
        while True:
            try:
                res = queue.get(timeout=0.5)
                break
            except queue_mod.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"a rank failed (exit codes {dead}) or the run timed out")
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join()
    text = report(res, args)
    print(text, end="")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

"""Host overhead of ``optimizer.step()`` on many tiny tensors (the kernels do almost nothing).

    python bench/step_overhead.py [--tensors 300] [--numel 8] [--threads 1] [--backend cpp]
                                  [--device cpu|cuda]

Each optimizer steps the same parameter list (fresh gradients are not drawn: the time is the
step's own work); after one warm-up step, ``--repeats`` rounds of ``--steps`` steps are timed
and the min and median ms/step over rounds printed, beside torch's fused AdamW. On ``cuda`` a
round ends with a synchronisation (tiny tensors: the host's launch work is the step time).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import signopt  # noqa: E402


def time_steps(opt: torch.optim.Optimizer, steps: int, repeats: int, device: str) -> tuple[float, float]:
    opt.step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    rounds = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            opt.step()
        sync()
        rounds.append((time.perf_counter() - t) / steps * 1e3)
    return min(rounds), statistics.median(rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=300)
    ap.add_argument("--numel", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = [torch.randn(args.numel, device=args.device) for _ in range(args.tensors)]
    for p in params:
        p.grad = torch.randn_like(p)
    b = args.backend
    contenders = {
        f"SignSGD {b}": lambda: signopt.SignSGD(params, lr=1e-4, backend=b),
        f"Signum {b}": lambda: signopt.Signum(params, lr=1e-4, backend=b),
        f"Lion {b}": lambda: signopt.Lion(params, lr=1e-4, backend=b),
        f"StoSignSGD {b}": lambda: signopt.StoSignSGD(params, lr=1e-4, backend=b),
        f"SignConversion-adamw {b}": lambda: signopt.SignConversion(params, lr=1e-4, backend=b),
        "torch AdamW fused": lambda: torch.optim.AdamW(params, lr=1e-4, fused=True),
    }
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"step overhead: {args.tensors} fp32 tensors of {args.numel} elements on {where}, torch "
          f"{torch.__version__}, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.2f} at start")
    for name, make in contenders.items():
        lo, med = time_steps(make(), args.steps, args.repeats, args.device)
        print(f"{name:28s} min {lo:7.3f}  median {med:7.3f} ms/step")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()

"""Host overhead of ``optimizer.step()`` on many tiny tensors (the kernels do almost nothing).

    python bench/step_overhead.py [--tensors 300] [--numel 8] [--threads 1] [--backend cpp]
                                  [--device cpu|cuda] [--against CHECKOUT [--rounds 5]]

Each optimizer steps the same parameter list (fresh gradients are not drawn: the time is the
step's own work); after one warm-up step, ``--repeats`` rounds of ``--steps`` steps are timed
and the min and median ms/step over rounds printed, beside torch's fused AdamW. On ``cuda`` a
round ends with a synchronisation (tiny tensors: the host's launch work is the step time).

``--against CHECKOUT`` compares with another checkout of signopt (say a worktree of an older
commit, its extension built): ``--rounds`` times, this script runs once in a process of its own
for that checkout and once for this one, alternately, and the table gives per optimizer the min
over rounds of each run's min, and this checkout's over the other's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
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
    ap.add_argument("--against", default=None, help="another checkout of signopt to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.against:
        compare(args)
        return
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


def compare(args: argparse.Namespace) -> None:
    """This checkout against ``args.against``, in alternating processes (see the module doc)."""
    here = Path(__file__).resolve()
    other = Path(args.against).resolve() / "bench" / "step_overhead.py"
    flags = [f"--{k}={getattr(args, k)}" for k in ("tensors", "numel", "threads", "backend", "steps", "repeats",
                                                   "device")]
    best: dict[str, dict[str, float]] = {"other": {}, "this": {}}
    from bench.provenance import provenance_line
    print(provenance_line(args.device))
    print(f"step overhead, this checkout ({here.parents[1]}) against {other.parents[1]}: {args.rounds} alternating "
          f"rounds, {' '.join(flags)}, load average {os.getloadavg()[0]:.2f} at start")
    for _ in range(args.rounds):
        for who, script in (("other", other), ("this", here)):
            out = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True,
                                 check=True).stdout
            for line in out.splitlines():
                if " min " in line:
                    name, rest = line.split(" min ", 1)
                    lo = float(rest.split()[0])
                    key = name.strip()
                    best[who][key] = min(best[who].get(key, lo), lo)
    print(f"{'optimizer':28s} {'other ms':>9s} {'this ms':>9s} {'this/other':>10s}")
    for key, lo in best["this"].items():
        if key in best["other"]:
            print(f"{key:28s} {best['other'][key]:9.3f} {lo:9.3f} {lo / best['other'][key]:10.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()

"""The cost of step statistics: step time with ``step_stats=True`` against ``False``, interleaved.

    python bench/step_stats_cost.py [--numel N] [--tensors T] [--rounds R] [--steps S] [--backend cpp]
                                    [--threads N]

For each rule (Lion fp32 state, Lion FP8 E4M3 state, StoSignSGD), two optimizers over the same
fp32 parameter list (``numel`` elements in ``tensors`` tensors), one with and one without step
statistics; each round times ``steps`` steps of one, then of the other (the order alternating
between rounds), after a warm-up step. Printed per rule and setting: min and median step time
over all timed steps, and the ratio on/off of each; with the provenance line (CPU model,
threads) and the load average at the start and the end. The statistics add no pass over the
parameters (they are computed in the update pass): the extra time is their arithmetic, the
sign bytes read and written (1 byte/element) and ``opt.step_stats()`` is not called in the loop.
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
from bench.provenance import provenance_line  # noqa: E402

RULES = {
    "lion_fp32": (signopt.Lion, dict(weight_decay=0.1)),
    "lion_fp8_e4m3": (signopt.Lion, dict(weight_decay=0.1, state_dtype="fp8_e4m3")),
    "stosignsgd": (signopt.StoSignSGD, dict(weight_decay=0.1)),
}


def timed_steps(opt: torch.optim.Optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=8 << 20)
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(provenance_line("cpu"))
    print(f"load average {os.getloadavg()[0]:.2f} at start; {args.numel} parameters in {args.tensors} tensors, "
          f"backend {args.backend}, {args.rounds} rounds x {args.steps} steps")
    gen = torch.Generator().manual_seed(0)
    size = args.numel // args.tensors
    print(f"{'rule':<16}{'stats':>6}{'min ms':>10}{'median ms':>11}{'ns/param':>10}")
    for name, (cls, options) in RULES.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        opts = {}
        for on in (False, True):
            params = [torch.randn(size, generator=gen) for _ in range(args.tensors)]
            for p in params:
                p.grad = torch.randn(size, generator=gen)
            opts[on] = cls(params, lr=1e-4, backend=args.backend, step_stats=on, seed=0, **options)
            opts[on].step()  # warm-up: state, plan
        for r in range(args.rounds):
            for on in ((False, True) if r % 2 == 0 else (True, False)):
                times[on] += timed_steps(opts[on], args.steps)
        rows = {on: (min(t), statistics.median(t)) for on, t in times.items()}
        for on in (False, True):
            mn, med = rows[on]
            print(f"{name:<16}{'on' if on else 'off':>6}{mn * 1e3:>10.2f}{med * 1e3:>11.2f}"
                  f"{mn * 1e9 / (size * args.tensors):>10.3f}")
        print(f"{name:<16}{'on/off':>6}{rows[True][0] / rows[False][0]:>10.3f}{rows[True][1] / rows[False][1]:>11.3f}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()

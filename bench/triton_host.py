"""Host time per step of the Triton backend on a many-tensor list, with the kernel launches
replaced by no-ops (so it runs without a GPU and times only what Python does per step: tables,
partitions, keys, scalars).

    python bench/triton_host.py [--tensors 300] [--numel 64] [--steps 50] [--repeats 5]

Imports Triton (the interpreter is not used: no kernel runs). Each of ``passes``' jitted
kernels is swapped for a stub that accepts ``kernel[grid](*args, **kwargs)`` and returns; the
step count of the stubs is printed so that a run that launches nothing by mistake shows. Works on
this checkout's API (``backend.prepare(...).run(grads, values, contiguous)``) and, for a
before/after comparison, on a checkout whose ``kernels.launch`` has ``step(rule, slots, scalars)``
(run the script with ``PYTHONPATH`` at that checkout).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import signopt  # noqa: E402,F401
from signopt.rule import UpdateRule  # noqa: E402
from signopt.scalars import group_scalars  # noqa: E402

GROUP = {"lr": 1e-3, "lr0": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.99), "eps": 1e-8,
         "huber_delta": 1.0, "p": 2.0, "envelope_decay": 1.0, "seed": 1234}


class _Stub:
    calls = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            _Stub.calls += 1
        return launch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=300)
    ap.add_argument("--numel", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import importlib
    launch = importlib.import_module("signopt.kernels.launch")
    passes = importlib.import_module("signopt.kernels.passes")
    for name in ("update_kernel", "reduce_chunks_kernel", "reduce_finalize_kernel"):
        setattr(passes, name, _Stub())
    launch.interpreting = lambda: True  # CPU tensors are accepted; nothing is launched
    from signopt.backends.slot import ParamSlot
    torch.set_num_threads(1)
    rules = {"Lion": UpdateRule(family="lion"),
             "StoSignSGD": UpdateRule(family="stochastic", base="momentum"),
             "Lion fp8 state": UpdateRule(family="lion", state_dtype="fp8_e4m3", fp8_min_numel=0)}
    print(f"Triton host time per step, kernels stubbed: {args.tensors} fp32 tensors of {args.numel} "
          f"elements, torch {torch.__version__}, 1 thread, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; API: "
          f"{'prepare/run' if hasattr(launch, 'Plan') else 'launch.step'}")
    for label, rule in rules.items():
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(args.numel, generator=gen) for _ in range(args.tensors)]
        grads = [torch.randn(args.numel, generator=gen) for _ in params]
        slots = []
        for i, p in enumerate(params):
            st = _allocate(rule, p)
            slots.append(ParamSlot(param=p, grad=grads[i], state=st, index=i))
        sc = group_scalars(rule, GROUP, None, None)
        step = _stepper(launch, rule, slots, grads, sc)
        step()
        rounds = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            rounds.append((time.perf_counter() - t) / args.steps * 1e3)
        print(f"{label:16s} min {min(rounds):7.3f}  median {statistics.median(rounds):7.3f} ms/step "
              f"({_Stub.calls} stub launches so far)")


def _allocate(rule: UpdateRule, p: torch.Tensor) -> dict:
    try:
        from signopt import state_layout
        return state_layout.allocate(rule, tuple(p.shape), p.numel(), p.device)
    except ImportError:  # a checkout before signopt.state_layout
        from signopt import state_format
        st: dict = {}
        fmt = state_format.effective_format(rule.state_dtype, p.numel(), rule.fp8_min_numel)
        for name in rule.state_names():
            if name == "G" and rule.envelope != "element":
                st[name] = torch.zeros(rule.envelope_shape(p.shape), dtype=torch.float32)
            else:
                state_format.allocate(st, name, tuple(p.shape), fmt, rule.state_block, p.device)
        if rule.keeps_step():
            st["step"] = torch.tensor(0, dtype=torch.int64)
        return st


def _stepper(launch, rule, slots, grads, sc):
    counter = [0]
    indices = [s.index for s in slots]
    if hasattr(launch, "Plan"):
        from signopt.backends import load
        from signopt.scalars import step_values
        backend = load("triton")
        prepared = backend.prepare(rule, slots)

        def step():
            counter[0] += 1
            values = step_values(rule, GROUP, sc, [counter[0]] * len(slots), indices)
            return prepared.run(grads, values, True)
        return step
    from signopt.philox import derive_keys

    def step():  # the pre-plan API: every step rebuilds its tables from the slots
        counter[0] += 1
        if rule.keeps_step():
            words = derive_keys(GROUP["seed"], [counter[0]] * len(slots), indices)
            for j, s in enumerate(slots):
                s.key = (words[2 * j], words[2 * j + 1])
        return launch.step(rule, slots, sc)
    return step


if __name__ == "__main__":
    main()

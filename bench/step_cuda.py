"""CUDA mode of ``bench/step.py`` (``python bench/step.py --device cuda [--quick]``).

The same parameter lists (step.py's ``CASES``) and signopt rows, on the GPU, with the Triton
backend added: every signopt optimizer x backend (``cpp``, ``triton``, ``torch``) x state dtype,
and the peers that run on CUDA — torch AdamW (foreach, fused), lion-pytorch's Lion (torch ops)
and its Triton Lion (``Lion(params, use_triton=True)``: one launch per parameter, autotuned),
pytorch-optimizer Lion/SignSGD, bitsandbytes Lion8bit. A backend or peer that cannot run prints
one line and its rows are left out.

Timing: each round interleaves every contender with the streaming reference ``a.add_(b)`` on the
device (12 bytes/element in place). A contender's round builds the optimizer, runs one warm-up
step (allocates the state; compiles Triton kernels the first time), then times ``iters`` steps
between two CUDA events (``iters`` chosen from one probe step so a sample lasts about 20 ms,
1..20); the streaming reference is timed the same way. Events record on the stream, so host
work that leaves the GPU idle (per-parameter launches) counts. Reported: min and median per
step over rounds, bytes/param, bandwidth, its ratio to the streaming bandwidth, and the peak
device memory one ``step()`` allocates above what was allocated before it.

``run(args, out, step_module, device)`` also runs with ``device="cpu"`` (perf_counter timing,
no memory column) so the code path is exercised without a GPU; its timings mean nothing there.
"""
from __future__ import annotations

import gc
import statistics
import sys
import time
from types import ModuleType

import torch

import signopt
from signopt import backends as backend_registry

SAMPLE_S = 0.02
MAX_ITERS = 20
BACKENDS = ("cpp", "triton", "torch")
QUICK_TORCH_ROW = ("Lion", "fp32", "fp32")


# ------------------------------------------------------------------ device helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn, iters: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``iters`` back-to-back calls (CUDA events on CUDA)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def choose_iters(fn, device: torch.device) -> int:
    """Calls per sample: one probe call, then enough for about ``SAMPLE_S`` (1..MAX_ITERS)."""
    t = time_per_call(fn, 1, device)
    return max(1, min(MAX_ITERS, int(SAMPLE_S / max(t, 1e-6))))


def peak_step_memory(step, device: torch.device) -> int | None:
    """Device bytes one call of ``step`` allocates above what was allocated before it."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    sync(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def make_list(S: ModuleType, d: int, layers: int, dtype: torch.dtype,
              device: torch.device) -> tuple[list[torch.Tensor], int]:
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for s in S.layer_shapes(d, layers):
        p = (torch.randn(s, generator=gen, device=device) * 0.02).to(dtype)
        p.grad = (torch.randn(s, generator=gen, device=device) * 0.01).to(dtype)
        params.append(p)
    return params, sum(p.numel() for p in params)


# ------------------------------------------------------------------ contenders
def backend_problem(name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot run a plain Lion group on ``device`` (None if it can)."""
    try:
        backend = backend_registry.load(name)
    except backend_registry.BackendUnavailable as exc:
        return str(exc)
    probe = [torch.zeros(8, device=device)]
    return backend.unsupported(signopt.Lion(probe, backend="torch").rule(), probe)


def signopt_rows(S: ModuleType, quick: bool, device: torch.device) -> tuple[list[dict], list[str]]:
    """step.py's signopt rows for cpp and torch, the same rows for triton; unavailable backends
    are dropped with a line."""
    base = S.signopt_rows(quick)
    rows = [dict(r) for r in base] + [dict(r, backend="triton") for r in base if r["backend"] == "cpp"]
    notes = []
    if quick:  # the torch reference takes up to 1 s a step on GPU for the stochastic rules
        rows = [r for r in rows if r["backend"] != "torch" or (r["name"], r["pdtype"], r["state"]) == QUICK_TORCH_ROW]
        notes.append("--quick: backend torch measured for %s %s/%s only" % QUICK_TORCH_ROW)
    order = {b: i for i, b in enumerate(BACKENDS)}
    rows.sort(key=lambda r: order.get(r["backend"], 99))  # stable: families in step.py's order
    for name in BACKENDS:
        why = backend_problem(name, device)
        if why is not None:
            notes.append(f"backend {name} rows left out on {device.type}: {why}")
            rows = [r for r in rows if r["backend"] != name]
    return rows, notes


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text}"


def _probe(make, device: torch.device) -> None:
    """Build a peer on a small tensor of ``device`` and step it once."""
    p = torch.zeros(4096, device=device, requires_grad=True)
    p.grad = torch.ones(4096, device=device)
    make([p]).step()
    sync(device)


def peer_rows(device: torch.device) -> tuple[list[dict], list[str]]:
    """Peers that run on ``device``; each one that cannot gives a line instead of a row."""
    candidates = [
        ("torch AdamW foreach", "fp32", 2, lambda: (lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True))),
        ("torch AdamW fused", "fp32", 2, lambda: (lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True))),
    ]

    def lion_pt(use_triton):
        def factory():
            from lion_pytorch import Lion as LionPT
            return lambda ps: LionPT(ps, lr=1e-4, use_triton=use_triton)
        return factory

    def po(name):
        def factory():
            import pytorch_optimizer
            if name == "Lion":
                return lambda ps: pytorch_optimizer.Lion(ps, lr=1e-4)
            return lambda ps: pytorch_optimizer.SignSGD(ps, lr=1e-4, momentum=0.9)
        return factory

    def bnb_lion():
        import bitsandbytes as bnb
        return lambda ps: bnb.optim.Lion8bit(ps, lr=1e-4)

    candidates += [("lion-pytorch Lion", "fp32", 1, lion_pt(False))]
    if device.type == "cuda":
        candidates += [("lion-pytorch Triton Lion", "fp32", 1, lion_pt(True))]
    candidates += [("pytorch-optimizer Lion", "fp32", 1, po("Lion")),
                   ("pytorch-optimizer SignSGD", "fp32", 1, po("SignSGD")),
                   ("bitsandbytes Lion8bit", "int8", 1, bnb_lion)]
    rows, missing = [], []
    if device.type != "cuda":
        missing.append("lion-pytorch Triton Lion: CUDA only")
    for name, state, n_states, factory in candidates:
        try:
            make = factory()
            _probe(make, device)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - lion_pytorch.triton calls exit()
            missing.append(f"{name}: does not run here ({_first_line(exc)})")
            continue
        rows.append(dict(kind="peer", name=name, make=make, state=state, n_states=n_states,
                         pdtype="fp32", backend="-"))
    return rows, missing


def time_contender(row: dict, params: list[torch.Tensor], device: torch.device,
                   measure_mem: bool) -> tuple[float, int | None]:
    if row["kind"] == "signopt":
        kw = dict(row["kw"])
        if row["n_states"]:
            kw["state_dtype"] = row["state"]
        opt = row["cls"](params, lr=1e-4, backend=row["backend"], **kw)
        assert opt.backends == [row["backend"]], (opt.backends, row["backend"])
    else:
        opt = row["make"](params)
    opt.step()  # warm-up: allocates the state, compiles Triton kernels the first time
    iters = choose_iters(opt.step, device)
    dt = time_per_call(opt.step, iters, device)
    mem = peak_step_memory(opt.step, device) if measure_mem else None
    del opt
    gc.collect()
    return dt, mem


# ------------------------------------------------------------------ report
RATIOS = [
    ("triton Lion fp32 vs lion-pytorch Triton Lion", ("Lion", "triton", "fp32", "fp32"),
     ("lion-pytorch Triton Lion", "-", "fp32", "fp32")),
    ("cpp Lion fp32 vs lion-pytorch Triton Lion", ("Lion", "cpp", "fp32", "fp32"),
     ("lion-pytorch Triton Lion", "-", "fp32", "fp32")),
    ("triton Lion fp32 vs lion-pytorch Lion", ("Lion", "triton", "fp32", "fp32"),
     ("lion-pytorch Lion", "-", "fp32", "fp32")),
    ("cpp Lion fp32 vs lion-pytorch Lion", ("Lion", "cpp", "fp32", "fp32"), ("lion-pytorch Lion", "-", "fp32", "fp32")),
    ("cpp Lion fp32 vs torch AdamW fused", ("Lion", "cpp", "fp32", "fp32"), ("torch AdamW fused", "-", "fp32", "fp32")),
    ("triton Lion fp32 vs torch AdamW fused", ("Lion", "triton", "fp32", "fp32"),
     ("torch AdamW fused", "-", "fp32", "fp32")),
    ("cpp Lion bf16+E4M3 vs fp32 AdamW fused", ("Lion", "cpp", "bf16", "fp8_e4m3"),
     ("torch AdamW fused", "-", "fp32", "fp32")),
    ("triton Lion bf16+E4M3 vs fp32 AdamW fused", ("Lion", "triton", "bf16", "fp8_e4m3"),
     ("torch AdamW fused", "-", "fp32", "fp32")),
]


def run_case(S: ModuleType, case: str, dims: tuple[int, int], rows: list[dict], repeats: int, out,
             device: torch.device) -> None:
    d, layers = dims
    lists = {"fp32": make_list(S, d, layers, torch.float32, device),
             "bf16": make_list(S, d, layers, torch.bfloat16, device)}
    n = lists["fp32"][1]
    param_bytes = n * 4
    a = torch.randn(n, device=device)
    b = torch.randn(n, device=device)
    add = lambda: a.add_(b)  # noqa: E731
    add()
    stream_iters = choose_iters(add, device)
    times: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    mems: dict[int, int | None] = {}
    errors: dict[int, str] = {}
    streams = []
    for r in range(repeats):
        for i, row in enumerate(rows):
            if i in errors:
                continue
            print(f"[{case} round {r}] {row['name']} {row['backend']} {row['pdtype']} {row['state']}",
                  file=sys.stderr, flush=True)
            streams.append(time_per_call(add, stream_iters, device))
            try:
                dt, mem = time_contender(row, lists[row["pdtype"]][0], device, measure_mem=(r == 0))
            except Exception as exc:  # noqa: BLE001 - one failing row must not end the table
                errors[i] = _first_line(exc)
                continue
            times[i].append(dt)
            if r == 0:
                mems[i] = mem
    del a, b
    stream_bw = 12.0 * n / min(streams)
    stream_med = 12.0 * n / statistics.median(streams)
    print(f"\n== {case} on {device_label(device)}: {n / 1e6:.2f}M parameters in {len(lists['fp32'][0])} "
          f"tensors; streaming a.add_(b): {stream_bw / 1e9:.1f} GB/s best, {stream_med / 1e9:.1f} GB/s "
          f"median ({len(streams)} samples of {stream_iters} calls) ==", file=out)
    print(f"{'optimizer':26s} {'backend':7s} {'param':5s} {'state':8s} {'B/param':>7s} "
          f"{'min ms':>9s} {'med ms':>9s} {'GB/s':>7s} {'%stream':>7s} {'peak MB':>8s} {'peak/params':>11s}",
          file=out)
    results = {}
    for i, row in enumerate(rows):
        if i in errors:
            print(f"{row['name']:26s} {row['backend']:7s} {row['pdtype']:5s} {row['state']:8s} "
                  f"FAILED: {errors[i]}", file=out)
            continue
        if not times[i]:
            continue
        bpp = S.bytes_per_param(row) if row["kind"] == "signopt" else S.peer_bytes(row)
        tmin, tmed = min(times[i]), statistics.median(times[i])
        bw = bpp * n / tmin
        mem = mems.get(i)
        mem_s = f"{mem / 2**20:8.1f}" if mem is not None else "       -"
        rel = f"{mem / param_bytes:11.3f}" if mem is not None else "          -"
        print(f"{row['name']:26s} {row['backend']:7s} {row['pdtype']:5s} {row['state']:8s} {bpp:7.2f} "
              f"{tmin * 1e3:9.3f} {tmed * 1e3:9.3f} {bw / 1e9:7.1f} {100 * bw / stream_bw:6.1f}% {mem_s} {rel}",
              file=out)
        results[(row["name"], row["backend"], row["pdtype"], row["state"])] = tmin
    for label, mine, peer in RATIOS:
        if mine in results and peer in results:
            print(f"speed-up {label}: {results[peer] / results[mine]:.2f}x (min times)", file=out)
    for name, pdt, state in [("Lion", "fp32", "fp32"), ("Lion", "bf16", "fp8_e4m3"), ("Signum", "fp32", "fp32")]:
        tri, cpp = results.get((name, "triton", pdt, state)), results.get((name, "cpp", pdt, state))
        if tri and cpp:
            print(f"time ratio triton/cpp {name} {pdt}/{state}: {tri / cpp:.3f} (target <= 1.10)", file=out)
    del lists
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def run(args, out, S: ModuleType, device: str = "cuda") -> int:
    """The CUDA table; ``S`` is bench/step.py (its lists, rows and byte counts)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("step.py --device cuda: no CUDA device on this machine; nothing measured", file=out)
        return 0
    repeats = args.repeats or (2 if args.quick else 3)
    rows, notes = signopt_rows(S, args.quick, dev)
    peers, missing = peer_rows(dev)
    triton_version = getattr(sys.modules.get("triton"), "__version__", None)
    print(f"signopt step benchmark on {device_label(dev)}: torch {torch.__version__}, triton "
          f"{triton_version or 'not imported'}, {repeats} rounds, CUDA-event timing"
          if dev.type == "cuda" else
          f"signopt step benchmark, CUDA code path run on {dev.type} (timings meaningless here)", file=out)
    for line in notes:
        print(line, file=out)
    for line in missing:
        print(f"peer missing: {line}", file=out)
    cases = S.QUICK_CASES if args.quick else S.CASES
    for case in args.cases.split(","):
        if case not in cases:  # the cache case is the CPU's compute-bound check
            print(f"case {case}: CPU only, not run on {device_label(dev)}", file=out)
            continue
        run_case(S, case, cases[case], rows + peers, repeats, out, dev)
    return 0

"""Optimizer step time on a model-like parameter list, beside the in-place streaming bandwidth.

    python bench/step.py [--quick] [--repeats N] [--cases large,small,cache] [--out FILE] [--device cuda]

Cases: ``large`` = 64M parameters in 150 tensors (25 transformer-like layers of 6 tensors),
``small`` = 1M parameters in 300 tensors.  ``cache`` (with ``large``): the compute-bound check —
each cpp row and peer runs STEADY consecutive steps on two L3-resident lists of 12 tensors
(0.79M and 1.57M parameters; no streaming samples in between, rounds interleaved); the difference
of the two step times over the difference of their sizes is its time per parameter in cache
without the per-step and per-tensor overhead.  A table sets it beside the row's time per parameter
in DRAM from the large case: a row whose time barely drops in cache is compute-bound, and
bytes/(time in cache) over the large case's streaming bandwidth is about the most of that
bandwidth its compute allows (the cache time still includes L3 traffic).  With it, the Philox
floor: the stochastic-sign words of as many elements as the large case has parameters (random
bits v2: one Philox4x32-10 call per four elements), computed by the stochastic kernels' own
routine (``torch.ops.signopt.philox_word0``), and for each row that draws random bits the most
of the streaming bandwidth it could reach if it computed nothing else.  Every
signopt optimizer x backend x state dtype, and
peers from PyPI when installed (torch AdamW foreach/fused, lion-pytorch, pytorch-optimizer
Lion/SignSGD, bitsandbytes Lion8bit); a missing peer prints a line.

Each contender is timed in rounds that interleave all contenders; a round builds the optimizer,
runs one warm-up step (which allocates the state), then times PAIRS steps, each right after one
sample of the streaming reference ``a.add_(b)`` (12 bytes/element in place), so every contender
has as many streaming samples beside it as timed steps.  Reported: min and median step time
over all its steps, bytes the step must move per parameter (params read+write, grads read, each
state read+write, FP8 scales; rules with a whole-tensor reduction — Lion-κ ``l2`` — read the
gradient and the momentum once more in the reduction pass of the two-pass scheme), bandwidth =
bytes*numel/time, its ratio to the streaming bandwidth of its own adjacent samples (min/min and
median/median), and the extra peak resident memory of one step() (Linux VmHWM after resetting
it).  Speed-ups against peers are given from min times, median times, and the median of each
step's time over the streaming sample just before it (robust when the machine's memory speed
changes during the run: the two contenders' minima may come from different phases).
Parameters and gradients are shared by every contender (values drift; sign-step timing does not
depend on them).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import signopt  # noqa: E402
from signopt import backends as backend_registry, declaration  # noqa: E402
from bench.provenance import provenance_line  # noqa: E402


# ------------------------------------------------------------------ parameter lists
def layer_shapes(d: int, layers: int) -> list[tuple[int, ...]]:
    """6 tensors a layer: qkv (3d x d), proj (d x d), fc1 (4d x d), fc2 (d x 4d), 2 norms (d)."""
    shapes = []
    for _ in range(layers):
        shapes += [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d), (d,), (d,)]
    return shapes


CASES = {"large": (464, 25), "small": (41, 50)}  # 64.6M / 150 tensors, 1.0M / 300 tensors
QUICK_CASES = {"large": (232, 25), "small": (41, 50)}
CACHE_DIMS = ((181, 2), (256, 2))  # 0.79M and 1.57M parameters in 12 tensors: the compute-bound check
STEADY = 20  # consecutive steps per timing of the compute-bound check


def make_list(d: int, layers: int, dtype: torch.dtype) -> tuple[list[torch.Tensor], int]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for s in layer_shapes(d, layers):
        p = (torch.randn(s, generator=gen) * 0.02).to(dtype)
        p.grad = (torch.randn(s, generator=gen) * 0.01).to(dtype)
        params.append(p)
    return params, sum(p.numel() for p in params)


# ------------------------------------------------------------------ contenders
def state_bytes_per_param(fmt: str, n_states: int) -> float:
    """Read + write bytes of the state per parameter: the format's code bits and, for a
    block-scaled format, its scale per default block (signopt.declaration.FORMATS)."""
    f = declaration.FORMATS[fmt]
    per = f.bits / 8
    if f.block_scaled:
        per += declaration.SCALE_TYPES[f.scale].itemsize / declaration.block_of(fmt, None)
    return 2 * per * n_states


NEW_FORMATS = ("mxfp8_e4m3", "fp4_e2m1")  # MXFP8 and MXFP4 state: cpp rows only (the torch
# reference of a block-scaled format runs minutes per step and is the oracle, not a contender)
NVFP4 = "fp4_e2m1_e4m3"  # NVFP4-style state (state_scale="e4m3"; vector loops and a scan pass): Lion's cpp rows


def signopt_rows(quick: bool) -> list[dict]:
    rows = []
    specs = [
        ("SignSGD", signopt.SignSGD, {}, 0),
        ("Signum", signopt.Signum, {}, 1),
        ("Lion", signopt.Lion, {}, 1),
        ("LionKappa-l2", signopt.LionKappa, {"kappa": "l2"}, 1),
        ("StoSignSGD", signopt.StoSignSGD, {}, 2),          # m and the element envelope G
        ("SignConversion-adamw", signopt.SignConversion, {"base": "adamw"}, 3),
        # Lion on bf16 parameters rounded stochastically (beside the Lion bf16 rows: nearest)
        ("Lion-psr", signopt.Lion, {"param_rounding": "stochastic"}, 1),
    ]
    two_pass = {"LionKappa-l2"}  # a reduction pass reads g and m before the update pass
    for name, cls, kw, n_states in specs:
        for backend in ("cpp", "torch"):
            fmts = ["fp32"] if n_states == 0 else ["fp32", "bf16", "fp8_e4m3"] + (
                list(NEW_FORMATS) + ([NVFP4] if name == "Lion" else []) if backend == "cpp" else [])
            for fmt in fmts:
                pdts = {"Lion": ("fp32", "bf16"), "Lion-psr": ("bf16",)}.get(name, ("fp32",))
                for pdt in pdts:
                    rows.append(dict(kind="signopt", name=name, cls=cls, kw=kw, backend=backend,
                                     state=fmt, pdtype=pdt, n_states=n_states, two_pass=name in two_pass,
                                     random=cls in (signopt.StoSignSGD, signopt.SignConversion)
                                     or kw.get("param_rounding") == "stochastic"))
    return rows


def bytes_per_param(row: dict) -> float:
    pb = 4.0 if row["pdtype"] == "fp32" else 2.0
    reduction = pb + state_bytes_per_param(row["state"], 1) / 2 if row.get("two_pass") else 0.0
    return 3 * pb + state_bytes_per_param(row["state"], row["n_states"]) + reduction


def peer_rows() -> tuple[list[dict], list[str]]:
    rows, missing = [], []
    rows.append(dict(kind="peer", name="torch AdamW foreach",
                     make=lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True), state="fp32", n_states=2))
    rows.append(dict(kind="peer", name="torch AdamW fused",
                     make=lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True), state="fp32", n_states=2))
    try:
        from lion_pytorch import Lion as LionPT
        rows.append(dict(kind="peer", name="lion-pytorch Lion",
                         make=lambda ps: LionPT(ps, lr=1e-4), state="fp32", n_states=1))
    except Exception as exc:  # noqa: BLE001
        missing.append(f"lion-pytorch: not installed ({exc.__class__.__name__}: {exc})")
    try:
        import pytorch_optimizer as po
        rows.append(dict(kind="peer", name="pytorch-optimizer Lion",
                         make=lambda ps: po.Lion(ps, lr=1e-4), state="fp32", n_states=1))
        rows.append(dict(kind="peer", name="pytorch-optimizer SignSGD",
                         make=lambda ps: po.SignSGD(ps, lr=1e-4, momentum=0.9), state="fp32", n_states=1))
    except Exception as exc:  # noqa: BLE001
        missing.append(f"pytorch-optimizer: not installed ({exc.__class__.__name__}: {exc})")
    try:
        import bitsandbytes as bnb
        probe = [torch.zeros(4096, requires_grad=True)]
        probe[0].grad = torch.ones(4096)
        bnb.optim.Lion8bit(probe, lr=1e-4).step()
        rows.append(dict(kind="peer", name="bitsandbytes Lion8bit",
                         make=lambda ps: bnb.optim.Lion8bit(ps, lr=1e-4), state="int8", n_states=1))
    except Exception as exc:  # noqa: BLE001
        missing.append(f"bitsandbytes Lion8bit: does not run here ({exc.__class__.__name__}: "
                       f"{str(exc).splitlines()[0][:120] if str(exc) else ''})")
    for r in rows:
        r.update(pdtype="fp32", backend="-")
    return rows, missing


def peer_bytes(row: dict) -> float:
    if row["state"] == "int8":  # bitsandbytes Lion8bit: int8 codes, one fp32 scale per 256
        return 12.0 + 2 * (1.0 + 4.0 / 256)
    return 12.0 + state_bytes_per_param("fp32", row["n_states"])


# ------------------------------------------------------------------ measurement
def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def peak_step_memory(step) -> int | None:
    """Extra peak resident bytes during one call of ``step`` (VmHWM reset via clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    gc.collect()
    before = _vm("VmRSS")
    step()
    return max(0, _vm("VmHWM") - before)


PAIRS = 2  # timed (streaming, step) pairs per contender and round


def stream_time(a: torch.Tensor, b: torch.Tensor) -> float:
    """One in-place ``a.add_(b)`` (12 bytes/element)."""
    t0 = time.perf_counter()
    a.add_(b)
    return time.perf_counter() - t0


def make_opt(row: dict, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The row's optimizer over ``params`` (a signopt row checks that its backend resolved)."""
    if row["kind"] != "signopt":
        return row["make"](params)
    kw = dict(row["kw"])
    if row["n_states"]:
        option_of = declaration.FORMATS[row["state"]].option_of  # (state_dtype, state_scale)
        kw.update(zip(("state_dtype", "state_scale"), option_of) if option_of else [("state_dtype", row["state"])])
    opt = row["cls"](params, lr=1e-4, backend=row["backend"], **kw)
    assert opt.backends == [row["backend"]]
    return opt


def time_contender(row: dict, params: list[torch.Tensor], measure_mem: bool, a: torch.Tensor,
                   b: torch.Tensor) -> tuple[list[float], list[float], int | None]:
    """PAIRS step times, each right after a streaming sample (same count: the ratio to streaming
    compares samples taken side by side, so machine load affects both alike)."""
    opt = make_opt(row, params)
    opt.step()  # warm-up: allocates the state (and builds nothing: backends resolve at construction)
    streams, steps = [], []
    for _ in range(PAIRS if not row.get("slow") else 1):
        streams.append(stream_time(a, b))
        t0 = time.perf_counter()
        opt.step()
        steps.append(time.perf_counter() - t0)
    mem = peak_step_memory(opt.step) if measure_mem else None
    del opt
    gc.collect()
    return streams, steps, mem


def run_case(case: str, dims: tuple[int, int], rows: list[dict], repeats: int, out) -> dict:
    """Times every row; prints the table; returns per row key its (min, median) seconds per
    parameter, under "stream" the best and median streaming bandwidth (B/s), under "numel" the
    parameter count."""
    d, layers = dims
    lists = {"fp32": make_list(d, layers, torch.float32), "bf16": make_list(d, layers, torch.bfloat16)}
    n = lists["fp32"][1]
    param_bytes = n * 4
    a = torch.randn(n)
    b = torch.randn(n)
    a.add_(b)  # warm
    times: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    adj: dict[int, list[float]] = {i: [] for i in range(len(rows))}  # streaming samples beside row i
    mems: dict[int, int | None] = {}
    skip_slow = case == "large"
    for r in range(repeats):
        for i, row in enumerate(rows):
            if row.get("slow") and (skip_slow or r > 0):
                continue  # slow rows: small case, first round only
            print(f"[{case} round {r}] {row['name']} {row['backend']} {row['pdtype']} {row['state']}",
                  file=sys.stderr, flush=True)
            st, dt, mem = time_contender(row, lists[row["pdtype"]][0], (r == 0), a, b)
            adj[i] += st
            times[i] += dt
            if r == 0:
                mems[i] = mem
    streams = [x for i in adj for x in adj[i]]
    stream_bw = 12.0 * n / min(streams)
    stream_med = 12.0 * n / statistics.median(streams)
    print(f"\n== {case}: {n / 1e6:.2f}M parameters in {len(lists['fp32'][0])} tensors; "
          f"streaming a.add_(b): {stream_bw / 1e9:.2f} GB/s best, {stream_med / 1e9:.2f} GB/s median "
          f"({len(streams)} samples, {PAIRS} beside each contender's {PAIRS} timed steps a round) ==", file=out)
    print("%stream min / med: the row's bandwidth over the streaming bandwidth of the samples taken "
          "beside its own steps (min over min, median over median)", file=out)
    print(f"{'optimizer':26s} {'backend':7s} {'param':5s} {'state':10s} {'B/param':>7s} {'n':>3s} "
          f"{'min ms':>9s} {'med ms':>9s} {'GB/s':>7s} {'%str min':>8s} {'%str med':>8s} {'peak MB':>8s} "
          f"{'peak/params':>11s}", file=out)
    results, results_med, results_rel = {}, {}, {}
    per_param: dict = {"stream": (stream_bw, stream_med), "numel": n}
    for i, row in enumerate(rows):
        if not times[i]:
            continue
        bpp = bytes_per_param(row) if row["kind"] == "signopt" else peer_bytes(row)
        tmin, tmed = min(times[i]), statistics.median(times[i])
        smin, smed = min(adj[i]), statistics.median(adj[i])
        bw = bpp * n / tmin
        pmin = 100 * (bpp / tmin) / (12.0 / smin)
        pmed = 100 * (bpp / tmed) / (12.0 / smed)
        mem = mems.get(i)
        mem_s = f"{mem / 2**20:8.1f}" if mem is not None else "       -"
        rel = f"{mem / param_bytes:11.3f}" if mem is not None else "          -"
        print(f"{row['name']:26s} {row['backend']:7s} {row['pdtype']:5s} {row['state']:10s} {bpp:7.2f} "
              f"{len(times[i]):3d} {tmin * 1e3:9.2f} {tmed * 1e3:9.2f} {bw / 1e9:7.2f} {pmin:7.1f}% {pmed:7.1f}% "
              f"{mem_s} {rel}", file=out)
        results[(row["name"], row["backend"], row["pdtype"], row["state"])] = tmin
        results_med[(row["name"], row["backend"], row["pdtype"], row["state"])] = tmed
        # each step over the streaming sample just before it: the machine's memory speed at that
        # moment divides out (its bandwidth alternates between phases during a run)
        results_rel[(row["name"], row["backend"], row["pdtype"], row["state"])] = statistics.median(
            t / st for t, st in zip(times[i], adj[i]))
        per_param[(row["name"], row["backend"], row["pdtype"], row["state"])] = (tmin / n, tmed / n, bpp)
        per_param.setdefault("pct", {})[(row["name"], row["backend"], row["pdtype"], row["state"])] = (pmin, pmed)
    ratios = [
        ("cpp Lion fp32 vs lion-pytorch", ("Lion", "cpp", "fp32", "fp32"), ("lion-pytorch Lion", "-", "fp32", "fp32")),
        ("cpp Lion fp32 vs torch AdamW fused", ("Lion", "cpp", "fp32", "fp32"), ("torch AdamW fused", "-", "fp32", "fp32")),
        ("cpp Lion bf16+E4M3 vs fp32 AdamW fused", ("Lion", "cpp", "bf16", "fp8_e4m3"),
         ("torch AdamW fused", "-", "fp32", "fp32")),
        ("cpp Lion fp32 vs torch-backend Lion", ("Lion", "cpp", "fp32", "fp32"), ("Lion", "torch", "fp32", "fp32")),
    ]
    for label, mine, peer in ratios:
        if mine in results and peer in results:
            print(f"speed-up {label}: {results[peer] / results[mine]:.2f}x (min times), "
                  f"{results_med[peer] / results_med[mine]:.2f}x (median times), "
                  f"{results_rel[peer] / results_rel[mine]:.2f}x (median of step time / streaming time beside it)",
                  file=out)
    return per_param


def compute_bound_check(large: dict, rows: list[dict], repeats: int, out) -> None:
    """Per cpp row and peer: seconds per parameter in cache, (t_big - t_small) / (n_big - n_small)
    with t the min over rounds (interleaving the rows) of the mean of STEADY consecutive steps on
    each CACHE_DIMS list, beside its large-case time; ceiling = bytes / (time in cache) over the
    large case's streaming bandwidth (best, median)."""
    rows = [r for r in rows if r["backend"] != "torch" and not r.get("slow")
            and (r["name"], r["backend"], r["pdtype"], r["state"]) in large]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    lists = [{k: make_list(*dims, dt) for k, dt in dtypes.items()} for dims in CACHE_DIMS]
    sizes = [ls["fp32"][1] for ls in lists]
    steady = {(i, s): [] for i in range(len(rows)) for s in range(len(lists))}
    for r in range(repeats):
        for i, row in enumerate(rows):
            print(f"[cache round {r}] {row['name']} {row['backend']} {row['pdtype']} {row['state']}",
                  file=sys.stderr, flush=True)
            for s, ls in enumerate(lists):
                opt = make_opt(row, ls[row["pdtype"]][0])
                opt.step()
                t0 = time.perf_counter()
                for _ in range(STEADY):
                    opt.step()
                steady[(i, s)].append((time.perf_counter() - t0) / STEADY)
                del opt
                gc.collect()
    sbest, smed = large["stream"]
    print(f"\n== compute-bound check: {STEADY} consecutive steps a timing on {sizes[0] / 1e6:.2f}M and "
          f"{sizes[1] / 1e6:.2f}M parameters in {len(lists[0]['fp32'][0])} tensors (L3-resident), {repeats} "
          f"rounds; ns/p cache = (min time big - min time small) / (n big - n small); ceiling = "
          f"bytes/(ns/p cache) over the large case's streaming bandwidth ({sbest / 1e9:.1f} GB/s best, "
          f"{smed / 1e9:.1f} GB/s median) ==", file=out)
    print(f"{'optimizer':26s} {'backend':7s} {'param':5s} {'state':10s} {'ns/p DRAM':>9s} {'ns/p cache':>10s} "
          f"{'DRAM/cache':>10s} {'ceil best':>9s} {'ceil med':>8s}", file=out)
    for i, row in enumerate(rows):
        key = (row["name"], row["backend"], row["pdtype"], row["state"])
        tmin, _, bpp = large[key]
        cache = (min(steady[(i, 1)]) - min(steady[(i, 0)])) / (sizes[1] - sizes[0])
        if cache <= 0:
            print(f"{key[0]:26s} {key[1]:7s} {key[2]:5s} {key[3]:10s} {tmin * 1e9:9.3f} (noise: the bigger list "
                  f"was not slower)", file=out)
            continue
        print(f"{key[0]:26s} {key[1]:7s} {key[2]:5s} {key[3]:10s} {tmin * 1e9:9.3f} {cache * 1e9:10.3f} "
              f"{tmin / cache:10.2f} {100 * bpp / cache / sbest:8.0f}% {100 * bpp / cache / smed:7.0f}%", file=out)
    philox_floor_table(large, rows, repeats, out)


def philox_floor(n: int, repeats: int) -> float:
    """Seconds per element of the stochastic-sign words of n consecutive elements with the
    stochastic kernels' own routine (torch.ops.signopt.philox_word0, every thread), written into
    a 4 MB buffer that stays in cache; the min over repeats."""
    out = torch.empty(1 << 20, dtype=torch.int32)
    calls = -(-n // out.numel())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for c in range(calls):
            torch.ops.signopt.philox_word0(0x1234567, 0x89ABCDE, c * out.numel(), out)
        best = min(best, (time.perf_counter() - t0) / (calls * out.numel()))
    return best


def philox_floor_table(large: dict, rows: list[dict], repeats: int, out) -> None:
    """Rows that draw random bits (StoSignSGD, SignConversion: sign words; Lion-psr: parameter
    rounding words) draw them from Philox4x32-10 (random bits v2: one call per four elements;
    the numerics contract fixes the counters), so their step takes at least the time of those
    words alone: bytes / that time over the streaming bandwidth bounds the row's %stream."""
    sto = [r for r in rows if r["backend"] == "cpp" and r.get("random")
           and (r["name"], r["backend"], r["pdtype"], r["state"]) in large]
    if not sto:
        return
    floor = philox_floor(large["numel"], 2 * repeats)
    sbest, smed = large["stream"]
    print(f"\n== Philox floor: the sign words of {large['numel'] / 1e6:.1f}M elements with the kernels' routine, "
          f"{torch.get_num_threads()} threads: {floor * 1e9:.3f} ns/p (min of {2 * repeats}); the most %stream "
          f"a row that draws random bits can reach = bytes / floor over streaming ({sbest / 1e9:.1f} GB/s best, "
          f"{smed / 1e9:.1f} GB/s median) ==", file=out)
    print("left best/med: ns/p that 85% of streaming (best / median) leaves for everything but the sign words "
          "(loads, the rule, stores); negative: 85% is out of reach", file=out)
    print(f"{'optimizer':26s} {'param':5s} {'state':10s} {'B/param':>7s} {'ns/p DRAM':>9s} {'floor/DRAM':>10s} "
          f"{'max best':>8s} {'max med':>7s} {'left best':>9s} {'left med':>8s}", file=out)
    for r in sto:
        tmin, _, bpp = large[(r["name"], r["backend"], r["pdtype"], r["state"])]
        left = [bpp / (0.85 * bw) - floor for bw in (sbest, smed)]
        print(f"{r['name']:26s} {r['pdtype']:5s} {r['state']:10s} {bpp:7.2f} {tmin * 1e9:9.3f} "
              f"{floor / tmin:9.0%} {100 * bpp / floor / sbest:7.0f}% {100 * bpp / floor / smed:6.0f}% "
              f"{left[0] * 1e9:9.3f} {left[1] * 1e9:8.3f}", file=out)


TARGETS = (85.0, 70.0)  # % of streaming: rows without / with random bits


def targets_table(large: dict, rows: list[dict], out) -> None:
    """The large case's cpp rows against the CPU targets: every row without random bits at >= 85%
    of the streaming bandwidth sampled beside it, every row with random bits at >= 70%; Lion
    bf16/E4M3 at <= 0.55x the time of Lion fp32/fp32; stochastic parameter rounding (Lion-psr) at
    <= 1.2x the time of nearest (Lion, the same formats); StoSignSGD fp32/E4M3 at <= 1.2x Lion
    fp32/E4M3; Lion with MXFP4 state at <= 1.0x the time of E4M3 state.  Each from min times (min
    over min for %stream) and from median times."""
    pct = large.get("pct", {})
    cpp = [r for r in rows if r["backend"] == "cpp" and (r["name"], "cpp", r["pdtype"], r["state"]) in pct]
    if not cpp:
        return
    print(f"\n== targets (large case, cpp rows): >= {TARGETS[0]:.0f}% of streaming without random bits, "
          f">= {TARGETS[1]:.0f}% with; ratios of step times; each from min and from median times ==", file=out)
    met_all = True

    def verdict(ok_min: bool, ok_med: bool) -> str:
        nonlocal met_all
        met_all &= ok_min and ok_med
        return "met" if ok_min and ok_med else ("met (median only)" if ok_med else
                                                ("met (min only)" if ok_min else "NOT met"))

    for r in cpp:
        key = (r["name"], "cpp", r["pdtype"], r["state"])
        pmin, pmed = pct[key]
        goal = TARGETS[1] if r.get("random") else TARGETS[0]
        print(f"{r['name']:26s} {r['pdtype']:5s} {r['state']:10s} {'random' if r.get('random') else '      '} "
              f"{pmin:6.1f}% min {pmed:6.1f}% med  >= {goal:.0f}%: {verdict(pmin >= goal, pmed >= goal)}", file=out)

    def ratio(label: str, a: tuple, b: tuple, limit: float) -> None:
        if a not in large or b not in large:
            return
        rmin, rmed = large[a][0] / large[b][0], large[a][1] / large[b][1]
        print(f"{label}: {rmin:.3f}x (min) {rmed:.3f}x (median), <= {limit}x: "
              f"{verdict(rmin <= limit, rmed <= limit)}", file=out)

    ratio("Lion bf16/E4M3 over Lion fp32/fp32", ("Lion", "cpp", "bf16", "fp8_e4m3"), ("Lion", "cpp", "fp32", "fp32"),
          0.55)
    for st in ("fp32", "bf16", "fp8_e4m3"):
        ratio(f"Lion bf16/{st} stochastic over nearest parameter rounding", ("Lion-psr", "cpp", "bf16", st),
              ("Lion", "cpp", "bf16", st), 1.2)
    ratio("StoSignSGD fp32/E4M3 over Lion fp32/E4M3", ("StoSignSGD", "cpp", "fp32", "fp8_e4m3"),
          ("Lion", "cpp", "fp32", "fp8_e4m3"), 1.2)
    for pdt in ("fp32", "bf16"):  # 4-bit state moves fewer bytes than E4M3: it should not be slower
        ratio(f"Lion {pdt}/MXFP4 over Lion {pdt}/E4M3", ("Lion", "cpp", pdt, "fp4_e2m1"), ("Lion", "cpp", pdt, "fp8_e4m3"),
              1.0)
    print(f"all targets met: {'yes' if met_all else 'no'}", file=out)


def build_line() -> str:
    """Which C++ build the cpp rows ran: its -march (SIGNOPT_CXX_ARCH) and the vector layer it
    compiled (torch.ops.signopt.vector_isa)."""
    from signopt import build
    arch = next((f for f in build.cxx_flags() if f.startswith("-march")), "?")
    try:
        isa = torch.ops.signopt.vector_isa()
    except (AttributeError, RuntimeError):
        isa = "unknown"
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith(("flags", "Features"))), [])
    except OSError:
        flags = []
    simd = [f for f in flags if f.startswith(("sse", "ssse", "avx", "fma", "f16c", "asimd", "sve", "neon"))]
    return (f"cpp build: {arch} (SIGNOPT_CXX_ARCH={os.environ.get('SIGNOPT_CXX_ARCH', 'native')}), vector layer: "
            f"{isa}; CPU vector flags: {' '.join(simd) or 'unknown'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller large case (16M), 2 repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--cases", default="large,small,cache")
    ap.add_argument("--out", default=None, help="also write the report to this file")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: the table on the GPU with triton rows and GPU peers (bench/step_cuda.py)")
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)

    class Tee:
        def __init__(self, *files):
            self.files = files

        def write(self, s):
            for f in self.files:
                f.write(s)

        def flush(self):
            for f in self.files:
                f.flush()

    provenance = provenance_line(args.device)  # before the output file (tracked) is truncated: not "dirty"
    fh = open(args.out, "w") if args.out else None
    out = Tee(sys.stdout, fh) if fh else sys.stdout
    print(provenance, file=out)
    if args.device == "cuda":  # CUDA events, triton rows, GPU peers: bench/step_cuda.py
        import step_cuda
        try:
            step_cuda.run(args, out, sys.modules[__name__])
        finally:
            if fh:
                fh.close()
        return
    try:
        backend_registry.load("cpp")
    except backend_registry.BackendUnavailable as exc:
        print(f"cpp backend unavailable: {exc}", file=out)
    rows = signopt_rows(args.quick)
    for r in rows:  # the torch reference of stochastic rules / FP8 state takes minutes per 64M step
        r["slow"] = r["backend"] == "torch" and (r["cls"] in (signopt.StoSignSGD, signopt.SignConversion)
                                                 or r["state"] != "fp32" or r["pdtype"] != "fp32")
    peers, missing = peer_rows()
    for r in peers:
        r["slow"] = r["name"] == "bitsandbytes Lion8bit"  # ~5 s per 1M-parameter step on this CPU
    print(f"signopt step benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start, {repeats} rounds", file=out)
    print(build_line(), file=out)
    for line in missing:
        print(f"peer missing: {line}", file=out)
    print("triton rows (and lion-pytorch's Triton Lion) are GPU-only: on CPU the triton backend runs only "
          "in the Triton interpreter, whose timings mean nothing; see python bench/step.py --device cuda",
          file=out)
    print("slow rows (torch-backend rows with stochastic rules or non-fp32 params/state: the reference "
          "rounds with int64 bit operations; bitsandbytes Lion8bit) run in the small case only, "
          "one round (min = median)", file=out)
    cases = QUICK_CASES if args.quick else CASES
    wanted = args.cases.split(",")
    measured = {case: run_case(case, cases[case], rows + peers, repeats, out) for case in wanted if case != "cache"}
    if "cache" in wanted:
        if "large" in measured:
            compute_bound_check(measured["large"], rows + peers, repeats, out)
        else:
            print("the cache check needs the large case in the same run", file=out)
    if "large" in measured:
        targets_table(measured["large"], rows, out)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end", file=out)
    if fh:
        fh.close()


if __name__ == "__main__":
    main()

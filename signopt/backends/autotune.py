"""The auto table: ``backend="auto"`` picks among kernel backends by measured step time.

Where more than one kernel backend can run a group (on CUDA: ``cpp`` and ``triton``; see
:data:`signopt.backends.MEASURED`), ``backend="auto"`` looks the group up in a JSON table of
measured step times, keyed by

    (device name, rule kind, parameter dtype, state dtype, size bucket)

where the size bucket is the group's element count and tensor count, each rounded to a power
of 4 in log space. On a miss it measures each candidate once, at construction, on a *synthetic*
tensor list of that profile that it allocates itself (never the live parameters or state: a
step updates in place, so timing it on live tensors would apply extra updates), stores the
result in the table and logs one line saying what it chose and why. ``step()`` never measures.

The fastest candidate wins, except that the earlier candidate of the static order
(:data:`signopt.backends.AUTO_ORDER`) is kept when it is within :data:`MARGIN` of the fastest,
so noise does not flip the choice.

* ``SIGNOPT_AUTO_TABLE``: the table's path (default ``~/.cache/signopt/auto_table.json``).
  It is plain JSON (read with :mod:`json`, never pickle); an unreadable or malformed file gives a
  warning naming it and is re-measured and rewritten.
* ``SIGNOPT_AUTO_MEASURE``: ``1`` (default) table, then measure on a miss; ``table`` table
  only (a miss takes the static order); ``0`` static order, the table is not read.

With ``torch.distributed`` initialised and more than one rank, a miss is never measured (ranks
could measure different winners, and the backends are not all bit-identical for inexact rules):
it takes the static order. Fill the table ahead of time instead, with the same file on every
node::

    python -m signopt.backends.autotune [--quick] [--table PATH]

An entry is reused while the candidates' versions match (the cpp build hash, Triton's version,
torch's version); otherwise it is measured again.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .. import declaration, state_layout
from ..rule import UpdateRule
from ..scalars import GroupScalars, group_scalars, step_values
from .slot import ParamSlot

log = logging.getLogger("signopt")

TABLE_ENV = "SIGNOPT_AUTO_TABLE"
MEASURE_ENV = "SIGNOPT_AUTO_MEASURE"
TABLE_FORMAT = "signopt-auto-table"
TABLE_VERSION = 1
MARGIN = 0.05  # the static order's earlier candidate wins unless another is >5% faster
MAX_NUMEL = {"cuda": 2**24}  # elements in a synthetic list, per device type
DEFAULT_MAX_NUMEL = 2**16
MAX_TENSORS = 256
ROUNDS = 5  # samples per candidate (interleaved); the minimum counts
WARMUPS = 2  # steps before timing (the first may compile a Triton kernel)
SAMPLE_S = 2e-3  # the default timer repeats a step until a sample lasts about this long

# timer(name, step, device) -> seconds per step of one sample; ``step`` runs one synthetic step.
Timer = Callable[[str, Callable[[], Any], torch.device], float]

_unsaved: dict[tuple[str, str], dict] = {}  # entries that could not be written, per (path, key)


# ------------------------------------------------------------------ settings
def measure_mode() -> str:
    """``"measure"`` (default), ``"table"`` or ``"off"``, from ``SIGNOPT_AUTO_MEASURE``."""
    value = os.environ.get(MEASURE_ENV, "1").strip().lower()
    if value in ("0", "off", "false", "no", "static"):
        return "off"
    if value == "table":
        return "table"
    return "measure"


def table_path() -> Path:
    """Where the auto table lives (``SIGNOPT_AUTO_TABLE`` or ``~/.cache/signopt/auto_table.json``)."""
    env = os.environ.get(TABLE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "signopt" / "auto_table.json"


def _distributed() -> bool:
    """Whether several ranks run (then misses are not measured: ranks must agree)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# ------------------------------------------------------------------ keys
def device_name(device: torch.device) -> str:
    """The device's model name (``torch.cuda.get_device_name``; the CPU model on CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return "cpu: " + line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "cpu: " + (platform.processor() or platform.machine())
    return device.type


def rule_key(rule: UpdateRule) -> str:
    """The rule's kind as it matters for speed (family, kappa/base/envelope, extra passes)."""
    if rule.family == "lion":
        key = f"lion-{rule.kappa}"
    elif rule.family == "stochastic":
        key = f"sto-{rule.base}-{rule.envelope}" + ("-grad" if rule.envelope_source == "grad" else "")
    else:
        key = rule.family
    if rule.cautious:
        key += "+cautious"
    if rule.state_rounding == "stochastic" and state_layout.element_slots(rule):
        key += "+srstate"
    if rule.param_rounding == "stochastic":
        key += "+srparam"
    return key


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
DTYPES = {v: k for k, v in DTYPE_NAMES.items()}


def _real_dtype(t: Tensor) -> torch.dtype:
    return torch.view_as_real(t).dtype if t.is_complex() else t.dtype


def profile(params: list[Tensor]) -> tuple[torch.dtype, int, int]:
    """(parameter dtype holding most elements, total elements, tensor count) of a group."""
    by_dtype: dict[torch.dtype, int] = {}
    numel = 0
    for p in params:
        n = p.numel() * (2 if p.is_complex() else 1)
        by_dtype[_real_dtype(p)] = by_dtype.get(_real_dtype(p), 0) + n
        numel += n
    dtype = max(by_dtype.items(), key=lambda kv: kv[1])[0] if by_dtype else torch.float32
    return dtype, numel, len(params)


def bucket(n: int) -> int:
    """``n`` rounded to a power of 4 in log space (1 for n <= 1)."""
    if n <= 1:
        return 1
    return 4 ** round(math.log(n, 4))


def _pow4(n: int) -> str:
    return f"4^{round(math.log(n, 4))}"


def entry_key(device: str, rule: UpdateRule, dtype: torch.dtype, numel: int, tensors: int) -> str:
    """The table key of a group profile (the size is bucketed here)."""
    return "|".join([device, rule_key(rule), DTYPE_NAMES.get(dtype, str(dtype)), rule.state_dtype,
                     f"n{_pow4(bucket(numel))}", f"t{_pow4(bucket(tensors))}"])


def backend_version(name: str) -> str:
    """What must not change for a measured time to stay valid."""
    if name == "cpp":
        from .. import build
        return f"cpp {build.build_dir().name} torch {torch.__version__}"
    if name == "triton":
        import triton
        return f"triton {triton.__version__} torch {torch.__version__}"
    return f"{name} torch {torch.__version__}"


# ------------------------------------------------------------------ table file
def _valid_entry(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("times_s"), dict)
            and isinstance(entry.get("versions"), dict)
            and all(isinstance(k, str) and (v is None or (isinstance(v, (int, float))
                                                          and not isinstance(v, bool) and v >= 0))
                    for k, v in entry["times_s"].items()))


def read_table(path: Path) -> dict[str, dict]:
    """The entries of the table at ``path`` ({} when absent; a warning when unreadable)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("signopt: cannot read the auto-backend table %s (%s); measuring again", path, exc)
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise ValueError(f"not a {TABLE_FORMAT} file")
        if data.get("version") != TABLE_VERSION:
            raise ValueError(f"version {data.get('version')!r}, this signopt reads {TABLE_VERSION}")
        entries = data.get("entries")
        if not isinstance(entries, dict) or not all(_valid_entry(e) for e in entries.values()):
            raise ValueError("malformed entries")
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        log.warning("signopt: the auto-backend table %s is corrupted or not a signopt table (%s); "
                    "ignoring it, measuring again and rewriting it", path, exc)
        return {}
    return entries


def write_entries(path: Path, new: Mapping[str, dict]) -> bool:
    """Merge ``new`` into the table at ``path`` (atomic replace); False if it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = read_table(path)
        entries.update(new)
        data = {"format": TABLE_FORMAT, "version": TABLE_VERSION, "entries": dict(sorted(entries.items()))}
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1, allow_nan=False)
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning("signopt: cannot write the auto-backend table %s (%s); the choice holds for "
                    "this process only", path, exc)
        return False
    return True


def lookup(entry: dict | None, versions: Mapping[str, str]) -> dict[str, float | None] | None:
    """The stored times of the current candidates, or None when any is missing or stale."""
    if entry is None:
        return None
    times, stored = entry["times_s"], entry["versions"]
    if any(name not in times or stored.get(name) != v for name, v in versions.items()):
        return None
    return {name: times[name] for name in versions}


def decide(times: Mapping[str, float | None], order: list[str], margin: float = MARGIN) -> str | None:
    """The earliest candidate of ``order`` within ``margin`` of the fastest (None if none ran)."""
    valid = {n: t for n, t in times.items() if t is not None and n in order}
    if not valid:
        return None
    best = min(valid.values())
    for name in order:
        if name in valid and valid[name] <= best * (1.0 + margin):
            return name
    return None  # unreachable


# ------------------------------------------------------------------ measurement
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_timer(name: str, step: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds per step (host work included), synchronised with the device; one
    sample repeats the step until it lasts about :data:`SAMPLE_S`."""
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    reps = max(1, min(50, int(SAMPLE_S / max(first, 1e-7))))
    if reps == 1:
        return first
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / reps


def synthetic_shapes(numel: int, tensors: int) -> list[tuple[int, ...]]:
    """``tensors`` equal tensors of about ``numel`` elements in all (2-D with 1024 columns
    when large enough, so row reductions have rows)."""
    tensors = max(1, min(tensors, numel))
    per = max(1, numel // tensors)
    shape = (per // 1024, 1024) if per >= 2048 else (per,)
    return [shape] * tensors


def _state_bytes_per_element(rule: UpdateRule) -> int:
    fmt = declaration.FORMATS[rule.state_dtype]
    return len(state_layout.element_slots(rule)) * fmt.bits // 8


def synthetic_list(rule: UpdateRule, dtype: torch.dtype, shapes: list[tuple[int, ...]],
                   device: torch.device, seed: int = 0) -> list[ParamSlot]:
    """Fresh parameters, gradients and zero state (allocated as the optimizer does)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    slots = []
    for i, shape in enumerate(shapes):
        p = (torch.randn(shape, generator=gen, device=device) * 0.02).to(dtype)
        g = (torch.randn(shape, generator=gen, device=device) * 0.01).to(dtype)
        st = state_layout.allocate(rule, tuple(p.shape), p.numel(), device)
        slots.append(ParamSlot(param=p, grad=g, state=st, index=i))
    return slots


SYNTHETIC_GROUP = {"lr": 1e-4, "lr0": 1e-4, "weight_decay": 0.1, "betas": (0.9, 0.99), "eps": 1e-8,
                   "huber_delta": 1.0, "p": 3.0, "envelope_decay": 1.0}


def synthetic_scalars(rule: UpdateRule) -> GroupScalars:
    return group_scalars(rule, SYNTHETIC_GROUP, None, None)


def _stepper(backend: Any, rule: UpdateRule, slots: list[ParamSlot], scalars: GroupScalars) -> Callable[[], Any]:
    """One synthetic step per call; random rules get a fresh key each step, as in the optimizer."""
    counter = [0]
    prepared = backend.prepare(rule, slots)
    grads = [s.grad for s in slots]
    indices = [s.index for s in slots]
    group = {**SYNTHETIC_GROUP, "seed": 12345}

    def step() -> Any:
        counter[0] += 1
        values = step_values(rule, group, scalars, [counter[0]] * len(slots), indices)
        return prepared.run(grads, values, True)

    return step


def fit_numel(rule: UpdateRule, dtype: torch.dtype, numel: int, candidates: int, device: torch.device) -> int:
    """The synthetic list's size: the profile's, capped per device and by free device memory."""
    numel = max(1, min(numel, MAX_NUMEL.get(device.type, DEFAULT_MAX_NUMEL)))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        per_elem = 2 * dtype.itemsize + _state_bytes_per_element(rule) + 4
        while numel > 2**16 and per_elem * numel * candidates > free // 4:
            numel //= 4
    return numel


def measure(candidates: Mapping[str, Any], rule: UpdateRule, dtype: torch.dtype, numel: int,
            tensors: int, device: torch.device, timer: Timer | None = None,
            rounds: int | None = None) -> tuple[dict[str, float | None], dict[str, str], list[tuple[int, ...]]]:
    """Step time of each candidate on its own synthetic list of the profile (interleaved rounds,
    minimum). Returns (times, errors, shapes); a candidate that fails has time None."""
    timer = timer or default_timer
    rounds = ROUNDS if rounds is None else rounds
    shapes = synthetic_shapes(fit_numel(rule, dtype, numel, len(candidates), device), tensors)
    scalars = synthetic_scalars(rule)
    steps: dict[str, Callable[[], Any]] = {}
    errors: dict[str, str] = {}
    for name, backend in candidates.items():
        try:
            slots = synthetic_list(rule, dtype, shapes, device)
            reason = backend.unsupported(rule, [s.param for s in slots])
            if reason is not None:
                raise ValueError(reason)
            steps[name] = _stepper(backend, rule, slots, scalars)
            for _ in range(WARMUPS):
                steps[name]()
            _sync(device)
        except Exception as exc:  # noqa: BLE001 - a failing candidate is reported, not chosen
            steps.pop(name, None)
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name in list(steps):
            try:
                samples[name].append(float(timer(name, steps[name], device)))
            except Exception as exc:  # noqa: BLE001
                errors[name] = f"{type(exc).__name__}: {exc}"[:300]
                del steps[name], samples[name]
    times: dict[str, float | None] = {name: None for name in candidates}
    for name, s in samples.items():
        if s:
            times[name] = min(s)
    return times, errors, shapes


def _fmt_times(times: Mapping[str, float | None]) -> str:
    return ", ".join(f"{n} {t * 1e3:.4g} ms" if t is not None else f"{n} failed" for n, t in times.items())


def _describe(rule: UpdateRule, dtype: torch.dtype, numel: int, tensors: int) -> str:
    return (f"{rule_key(rule)}, {DTYPE_NAMES.get(dtype, dtype)} params, {rule.state_dtype} state, "
            f"~{_pow4(bucket(numel))} elements in ~{_pow4(bucket(tensors))} tensors")


def measure_entry(candidates: Mapping[str, Any], rule: UpdateRule, dtype: torch.dtype, numel: int,
                  tensors: int, device: torch.device, timer: Timer | None = None,
                  rounds: int | None = None) -> dict:
    """Measure a profile and return its table entry (with the choice among ``candidates``)."""
    times, errors, shapes = measure(candidates, rule, dtype, numel, tensors, device, timer, rounds)
    entry = {
        "device": device_name(device), "rule": rule_key(rule), "param_dtype": DTYPE_NAMES.get(dtype, str(dtype)),
        "state_dtype": rule.state_dtype, "numel_bucket": bucket(numel), "tensors_bucket": bucket(tensors),
        "measured_numel": sum(math.prod(s) for s in shapes), "measured_tensors": len(shapes),
        "times_s": times, "choice": decide(times, list(candidates)),
        "versions": {name: backend_version(name) for name in candidates},
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if errors:
        entry["errors"] = errors
    return entry


def choose(candidates: Mapping[str, Any], rule: UpdateRule, params: list[Tensor], *,
           timer: Timer | None = None, path: Path | None = None) -> str | None:
    """The measured choice for a group among ``candidates`` (name -> backend, in the static
    order), or None to let the caller take the static order. Called at construction only."""
    mode = measure_mode()
    if mode == "off" or not params or len(candidates) < 2:
        return None
    device = params[0].device
    dtype, numel, tensors = profile(params)
    path = table_path() if path is None else path
    name = device_name(device)
    key = entry_key(name, rule, dtype, numel, tensors)
    versions = {n: backend_version(n) for n in candidates}
    order = list(candidates)
    what = _describe(rule, dtype, numel, tensors)
    entry = read_table(path).get(key) or _unsaved.get((str(path), key))
    times = lookup(entry, versions)
    if times is not None:
        choice = decide(times, order)
        log.info("signopt: backend='auto' chose %r for %s on %s: step time %s (%s; table %s, "
                 "measured %s)", choice or order[0], what, name, _fmt_times(times),
                 _why(times, order, choice), path, entry.get("measured_at", "?"))
        return choice
    if mode == "table" or _distributed():
        why = ("SIGNOPT_AUTO_MEASURE=table" if mode == "table"
               else "torch.distributed runs several ranks, which must agree")
        log.info("signopt: backend='auto': no measured entry for %s on %s in %s and %s: static order "
                 "%s (fill the table with `python -m signopt.backends.autotune`)", what, name, path, why,
                 order)
        return None
    t0 = time.perf_counter()
    entry = measure_entry(candidates, rule, dtype, numel, tensors, device, timer)
    choice = entry["choice"]
    saved = write_entries(path, {key: entry})
    if not saved:
        _unsaved[(str(path), key)] = entry
    errors = "; ".join(f"{n}: {e}" for n, e in entry.get("errors", {}).items())
    log.warning("signopt: backend='auto' chose %r for %s on %s: step time %s on a synthetic list of "
                "%d elements in %d tensors, measured once in %.2f s (%s%s; %s)",
                choice or order[0], what, name, _fmt_times(entry["times_s"]), entry["measured_numel"],
                entry["measured_tensors"], time.perf_counter() - t0, _why(entry["times_s"], order, choice),
                f"; failed: {errors}" if errors else "",
                f"saved to {path}" if saved else "not saved")
    return choice


def _why(times: Mapping[str, float | None], order: list[str], choice: str | None) -> str:
    """Why ``choice`` won, in words."""
    if choice is None:
        return "no candidate ran: static order"
    if choice == order[0]:
        return (f"fastest or within {MARGIN:.0%} of the fastest; first in the static order"
                if len(order) > 1 else "only candidate")
    first = times.get(order[0])
    if first is None:
        return f"{order[0]!r} failed"
    return f"{first / times[choice]:.2f}x faster than {order[0]!r} (more than the {MARGIN:.0%} margin)"


# ------------------------------------------------------------------ prefill command
def _kind_rule(k: declaration.Kind) -> UpdateRule:
    """A rule of kernel kind ``k`` (its first variant)."""
    variant = {"lion": "kappa", "stochastic": "base"}.get(k.family)
    return UpdateRule(family=k.family, **({variant: k.variants[0]} if variant else {}))


RULES = {k.name: _kind_rule(k) for k in declaration.KINDS}
"""One rule per kernel kind of the declaration (the prefill command measures these)."""
QUICK = dict(rules="lion_l1,signum,sto_momentum", pdtypes="fp32,bf16", states="fp32,fp8_e4m3",
             sizes="1M/256,64M/256")
FULL = dict(rules=",".join(RULES), pdtypes="fp32,bf16", states="fp32,bf16,fp8_e4m3",
            sizes="1M/256,64M/256")


def _parse_size(text: str) -> tuple[int, int]:
    """``"64M/256"`` -> (64 * 2**20, 256); suffixes K, M, G are powers of 2**10."""
    numel, _, tensors = text.partition("/")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(numel[-1:].upper(), 1)
    numel = numel[:-1] if mult > 1 else numel
    return int(float(numel) * mult), int(tensors or 1)


def configs(rules: str, pdtypes: str, states: str, sizes: str) -> list[tuple[str, UpdateRule, torch.dtype, int, int]]:
    out = []
    for rname in rules.split(","):
        base = RULES[rname]
        for pdt in pdtypes.split(","):
            for st in (states.split(",") if state_layout.element_slots(base) else ["fp32"]):
                rule = dataclasses.replace(base, state_dtype=st)
                for size in sizes.split(","):
                    numel, tensors = _parse_size(size)
                    out.append((rname, rule, DTYPES[pdt], numel, tensors))
    return out


def main(argv: list[str] | None = None, timer: Timer | None = None) -> int:
    from . import MEASURED, BackendUnavailable, load
    ap = argparse.ArgumentParser(prog="python -m signopt.backends.autotune",
                                 description="Fill the backend='auto' table ahead of time.")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--candidates", default=None,
                    help="comma-separated backends to compare (default: the device's measured set)")
    ap.add_argument("--table", default=None, help=f"table path (default ${TABLE_ENV} or ~/.cache/signopt)")
    ap.add_argument("--quick", action="store_true", help=f"a short list: {QUICK}")
    ap.add_argument("--rules", default=None, help=f"from {','.join(RULES)}")
    ap.add_argument("--pdtypes", default=None, help="fp32,bf16,fp16")
    ap.add_argument("--states", default=None, help="fp32,bf16,fp8_e4m3,fp8_e5m2")
    ap.add_argument("--sizes", default=None, help="group profiles NUMEL/TENSORS, e.g. 1M/256,64M/256")
    ap.add_argument("--rounds", type=int, default=None, help=f"samples per candidate (default {ROUNDS})")
    ap.add_argument("--force", action="store_true", help="measure even where the table has an entry")
    ap.add_argument("--budget-s", type=float, default=None, help="stop measuring after this many seconds")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("autotune: no CUDA device here; nothing measured")
        return 0
    path = Path(args.table).expanduser() if args.table else table_path()
    preset = QUICK if args.quick else FULL
    names = (args.candidates.split(",") if args.candidates
             else list(MEASURED.get(device.type, ())))
    loaded = {}
    for n in names:
        try:
            loaded[n] = load(n)
        except BackendUnavailable as exc:
            print(f"autotune: backend {n} unavailable: {exc}")
    print(f"autotune: device {device_name(device)}, candidates {list(loaded)}, torch {torch.__version__}, "
          f"table {path}")
    if len(loaded) < 2:
        print("autotune: fewer than two candidates, nothing to choose between; table not written")
        return 0
    todo = configs(args.rules or preset["rules"], args.pdtypes or preset["pdtypes"],
                   args.states or preset["states"], args.sizes or preset["sizes"])
    table = read_table(path)
    versions_all = {n: backend_version(n) for n in loaded}
    t_start = time.perf_counter()
    measured = skipped = 0
    for i, (rname, rule, dtype, numel, tensors) in enumerate(todo):
        if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
            print(f"autotune: budget of {args.budget_s:.0f} s spent; {len(todo) - i} configs not measured")
            break
        probe = [torch.zeros(8, device=device, dtype=dtype)]
        cands = {n: b for n, b in loaded.items() if b.unsupported(rule, probe) is None}
        what = _describe(rule, dtype, numel, tensors)
        if len(cands) < 2:
            print(f"{what}: only {list(cands)} can run it; skipped")
            continue
        key = entry_key(device_name(device), rule, dtype, numel, tensors)
        if not args.force and lookup(table.get(key), {n: versions_all[n] for n in cands}) is not None:
            skipped += 1
            print(f"{what}: in the table ({_fmt_times(table[key]['times_s'])} -> {table[key]['choice']})")
            continue
        t0 = time.perf_counter()
        entry = measure_entry(cands, rule, dtype, numel, tensors, device, timer, args.rounds)
        table[key] = entry
        if not write_entries(path, {key: entry}):
            return 1
        measured += 1
        err = f"  errors: {entry['errors']}" if "errors" in entry else ""
        print(f"{what}: {_fmt_times(entry['times_s'])} on {entry['measured_numel']} elements in "
              f"{entry['measured_tensors']} tensors -> {entry['choice']} ({time.perf_counter() - t0:.1f} s){err}",
              flush=True)
    print(f"autotune: {measured} measured, {skipped} already in the table, in "
          f"{time.perf_counter() - t_start:.1f} s; table {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Parsers for the text result files under ``bench/results/`` (read by ``bench/report.py``).

Every value is kept as the string the result file holds, so a page built from them repeats the
files' figures exactly. Provenance comes from a ``# provenance:`` line (``bench/provenance.py``,
written by the benchmarks since it exists); older files are read for the same facts in their
free-text headers, and a fact found in neither is ``None`` ("not recorded" on the page).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

PROVENANCE_KEYS = ("device", "cpu", "isa", "versions", "threads", "commit", "date")

# facts in the free-text headers of files written before bench/provenance.py
_LEGACY = {
    "device": (r"(?:gpu_check|step benchmark) on (NVIDIA [^,:]+?)[,:]", r"\d+-core [^;,]*?VM"),
    "cpu": (r"cpu '([^']+)'", r"\d+-core [^;,]*?VM", r"\d+ CPU cores \(([^)]+)\)"),
    "threads": (r"(\d+) threads?\b", r"threads (\d+)", r"torch threads = (\d+)",
                r"(\d+) torch thread"),
    "commit": (r"\bcommit ([0-9a-f]{7,40})\b",),
    "date": (r"(\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}:\d{2}Z)?)",),
}
_VERSION = re.compile(r"\b(python|torch|cuda|triton) (\d+\.\d+[\w.+]*)")


def read_provenance(*texts: str) -> dict[str, str | None]:
    """Provenance of a run from its result file(s): the ``# provenance:`` line, else the legacy
    headers (first 8 lines of each text)."""
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# provenance:"):
                pairs = (p.split("=", 1) for p in line[len("# provenance:"):].split(";") if "=" in p)
                got = {k.strip(): v.strip() for k, v in pairs}
                return {k: got.get(k) for k in PROVENANCE_KEYS}
    head = "\n".join("\n".join(t.splitlines()[:8]) for t in texts)
    out: dict[str, str | None] = {k: None for k in PROVENANCE_KEYS}
    for key, patterns in _LEGACY.items():
        for pat in patterns:
            m = re.search(pat, head)
            if m:
                out[key] = m.group(1) if m.groups() else m.group(0)
                break
    versions: dict[str, str] = {}
    for name, ver in _VERSION.findall(head):
        versions.setdefault(name, ver)
    out["versions"] = ", ".join(f"{k} {v}" for k, v in versions.items()) or None
    return out


@dataclass
class StepTable:
    """One case of a ``bench/step.py`` report (``large`` or ``small``)."""

    case: str
    header: str  # the ``== ... ==`` line's text: sizes and streaming bandwidth
    rows: list[dict[str, str]] = field(default_factory=list)
    speedups: list[str] = field(default_factory=list)


_CPU_COLS = ("backend", "param", "state", "bpp", "n", "min_ms", "med_ms", "gbs", "pct", "pct_med",
             "peak_mb", "peak_pp")
_GPU_COLS = ("backend", "param", "state", "bpp", "min_ms", "med_ms", "gbs", "pct", "peak_mb", "peak_pp")
NAME_WIDTH = 26  # bench/step.py writes the optimizer name left-aligned in 26 columns


def parse_step(text: str) -> list[StepTable]:
    """The ``large``/``small`` tables of a ``bench/step.py`` report (CPU or ``--device cuda``)."""
    tables: list[StepTable] = []
    cur: StepTable | None = None
    in_rows = False
    for line in text.splitlines():
        m = re.match(r"== (large|small)\b[^:]*: (.*) ==$", line)
        if m:
            cur = StepTable(m.group(1), m.group(2))
            tables.append(cur)
            in_rows = False
            continue
        if line.startswith("== "):
            cur, in_rows = None, False
            continue
        if cur is None:
            continue
        if line.startswith("optimizer "):
            in_rows = True
        elif line.startswith(("speed-up", "time ratio")):
            cur.speedups.append(line)
            in_rows = False
        elif in_rows and line.strip():
            vals = line[NAME_WIDTH:].split()
            cols = _CPU_COLS if len(vals) == len(_CPU_COLS) else _GPU_COLS
            if len(vals) == len(cols):
                cur.rows.append({"name": line[:NAME_WIDTH].strip(), **dict(zip(cols, vals))})
        elif not line.strip():
            in_rows = False
    return tables


_BW = re.compile(r"^(Lion \S+): (\S+) ms min, (\S+) ms median, (\S+) GB/s = (\S+)% of D2D copy")
_COPY = re.compile(r"^D2D copy: (\S+) fp32 elements, (\S+) GB/s")


def parse_gpu_bandwidth(text: str) -> tuple[str | None, list[dict[str, str]]]:
    """``bench/step_gpu.py``'s 1B-parameter rows: (copy bandwidth line, rows)."""
    copy = None
    rows = []
    for line in text.splitlines():
        if m := _COPY.match(line):
            copy = f"{m.group(2)} GB/s over {m.group(1)} fp32 elements"
        elif m := _BW.match(line):
            rows.append(dict(zip(("config", "min_ms", "med_ms", "gbs", "pct"), m.groups())))
    return copy, rows


def parse_state_memory(text: str) -> list[tuple[str, list[dict[str, str]]]]:
    """``bench/state_memory.py``'s per-list tables: (list title, rows of optimizer/state/B/param)."""
    out: list[tuple[str, list[dict[str, str]]]] = []
    title = None
    for line in text.splitlines():
        m = re.match(r"## (llama-\S+ \([^)]*\)): (.*)$", line)
        if m:
            title = f"{m.group(1)}: {m.group(2)}"
            out.append((title, []))
            continue
        if line.startswith("## "):
            title = None
            continue
        parts = line.split()
        if title and len(parts) >= 6 and parts[0] != "optimizer" and re.fullmatch(r"\d+", parts[2]):
            out[-1][1].append({"optimizer": parts[0], "state": parts[1], "bpp": parts[3]})
    return out


def parse_rl_step(text: str) -> list[dict[str, str | None]]:
    """``bench/rl_step.py``'s comparisons: per KL setting, signopt.rl and TRL s/step (min, median)."""
    out: list[dict[str, str | None]] = []
    for line in text.splitlines():
        if m := re.match(r"== KL beta (\S+) on both sides ==", line):
            out.append({"beta": m.group(1), "ours_min": None, "ours_med": None, "trl": None,
                        "trl_min": None, "trl_med": None, "ratio": None})
        elif not out:
            continue
        elif m := re.match(r"signopt\.rl: \d+ steps, s/step min (\S+) median (\S+?);", line):
            out[-1].update(ours_min=m.group(1), ours_med=m.group(2))
        elif m := re.match(r"TRL (\S+) GRPOTrainer: \d+ steps, s/step min (\S+) median (\S+)", line):
            out[-1].update(trl=m.group(1), trl_min=m.group(2), trl_med=m.group(3))
        elif m := re.match(r"signopt\.rl / TRL median step time: (\S+)", line):
            out[-1]["ratio"] = m.group(1)
    return out


def read(path: Path) -> str:
    """A result file's text, or an empty string when it does not exist."""
    return path.read_text() if path.exists() else ""


def parse_training_state(text: str) -> list[tuple[str, list[dict[str, str]]]]:
    """``bench/training_state_memory.py``'s tables: (list title, rows with param/grad/state/
    training bytes per parameter, or ``error`` for a contender that did not run)."""
    out: list[tuple[str, list[dict[str, str]]]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            out.append((line[3:], []))
        elif out and line.strip() and not line.startswith("optimizer "):
            name, rest = line[:34].strip(), line[34:].split()
            if "does not run:" in line:
                out[-1][1].append({"name": name, "param": rest[0], "error": line.split("does not run:", 1)[1].strip()})
            elif len(rest) >= 6:
                keys = ("param_bpp", "grad_bpp", "state_bpp", "training_bpp")
                out[-1][1].append({"name": name, "param": rest[0], "state": " ".join(rest[1:-4]),
                                   **dict(zip(keys, rest[-4:]))})
    return out

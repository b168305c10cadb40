"""Write ``docs/performance.md`` and its PNG plots from the result files in ``bench/results/``.

    python bench/report.py [--results bench/results] [--out docs/performance.md]

Every figure on the page is copied from a result file (``bench/results_parse.py`` keeps the
files' strings); each table and plot names the device, CPU ISA, versions, thread count, commit
and date its file records, and says "not recorded" where the file does not. Plots go next to the
page, in ``<out stem>/`` (``docs/performance/*.png``).
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.results_parse import (PROVENANCE_KEYS, StepTable, parse_gpu_bandwidth, parse_rl_step,  # noqa: E402
                                 parse_state_memory, parse_step, parse_training_state, read, read_provenance)

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"device": "device", "cpu": "CPU", "isa": "CPU ISA", "versions": "versions",
          "threads": "torch threads", "commit": "commit", "date": "date"}
COLORS = {"cpp": "tab:blue", "triton": "tab:purple", "torch": "tab:gray", "-": "tab:orange"}
LEGEND = {"cpp": "signopt cpp", "triton": "signopt triton", "torch": "signopt torch (reference)", "-": "peer"}


def provenance_md(prov: dict[str, str | None], sources: list[str]) -> str:
    """One line naming where a table's figures come from and what the file records."""
    facts = "; ".join(f"{LABELS[k]}: {prov[k] or 'not recorded'}" for k in PROVENANCE_KEYS)
    return f"*Source: {', '.join(f'`{s}`' for s in sources)}. {facts}.*"


def provenance_caption(prov: dict[str, str | None]) -> str:
    """The same facts for a plot title, wrapped to the plot's width."""
    text = " | ".join(f"{LABELS[k]}: {prov[k] or 'not recorded'}" for k in PROVENANCE_KEYS)
    return "\n".join(textwrap.wrap(text, 140))


def _label(row: dict[str, str]) -> str:
    who = row["name"] if row["backend"] == "-" else f"{row['name']} {row['backend']}"
    return f"{who} {row['param']}/{row['state']}"


@contextmanager
def bar_figure(labels: list[str], title: str, prov: dict[str, str | None], xlabel: str, png: Path) -> Iterator:
    """Axes for horizontal bars at y = 0, 1, ... (one per label, top to bottom); on exit the
    labels, ``xlabel``, the title with its provenance caption and a grid are set and the figure
    is saved to ``png``."""
    fig, ax = plt.subplots(figsize=(11, 0.26 * len(labels) + 2.2))
    try:
        yield ax
        ax.set_yticks(list(range(len(labels))), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(f"{textwrap.fill(title, 160)}\n{provenance_caption(prov)}", fontsize=7)
        ax.grid(axis="x", which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(png, dpi=110)
    finally:
        plt.close(fig)


def step_plot(table: StepTable, device: str, prov: dict[str, str | None], png: Path) -> None:
    """Horizontal bars of min step time (log scale), one per row, coloured by backend or peer."""
    rows = table.rows
    with bar_figure([_label(r) for r in rows], f"{device}, {table.case} case: {table.header.split(';')[0]}", prov,
                    "min step time, ms (log scale; shorter is faster)", png) as ax:
        ax.barh(list(range(len(rows))), [float(r["min_ms"]) for r in rows],
                color=[COLORS.get(r["backend"], "k") for r in rows])
        ax.set_xscale("log")
        present = [b for b in COLORS if any(r["backend"] == b for r in rows)]
        ax.legend([plt.Rectangle((0, 0), 1, 1, color=COLORS[b]) for b in present],
                  [LEGEND[b] for b in present], fontsize=7, loc="lower right")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.tick_params(axis="x", which="both", labelsize=7)


def step_section(title: str, tables: list[StepTable], prov: dict[str, str | None], sources: list[str],
                 plot_dir: Path, stem: str) -> list[str]:
    """Markdown (and plots) for one device's ``bench/step.py`` report."""
    out = [f"## Step time: {title}", "", provenance_md(prov, sources), ""]
    if not tables:
        return out + ["No step table in the result file.", ""]
    for table in tables:
        png = plot_dir / f"{stem}_{table.case}.png"
        step_plot(table, title, prov, png)
        cpu = "pct_med" in table.rows[0]
        out += [f"### {table.case}: {table.header}", "",
                f"![{title}, {table.case}]({plot_dir.name}/{png.name})", "",
                "| optimizer | backend | param | state | B/param moved | min ms | median ms | GB/s | "
                + ("% of streaming (min / median) |" if cpu else "% of streaming |"),
                "|---|---|---|---|---|---|---|---|---|"]
        for r in table.rows:
            pct = f"{r['pct']} / {r['pct_med']}" if cpu else r["pct"]
            out.append(f"| {r['name']} | {r['backend']} | {r['param']} | {r['state']} | {r['bpp']} | "
                       f"{r['min_ms']} | {r['med_ms']} | {r['gbs']} | {pct} |")
        if table.speedups:
            out += ["", "As the file states:", ""] + [f"- {s}" for s in table.speedups]
        out.append("")
    return out


def gpu_bandwidth_section(text: str, prov: dict[str, str | None], source: str) -> list[str]:
    """``bench/step_gpu.py``'s one-tensor bandwidth rows, as a table."""
    copy, rows = parse_gpu_bandwidth(text)
    if not rows:
        return []
    out = [f"### 1B parameters in one tensor, % of device-to-device copy ({copy})", "",
           provenance_md(prov, [source]), "",
           "| Lion params/state | min ms | median ms | GB/s | % of copy |", "|---|---|---|---|---|"]
    out += [f"| {r['config']} | {r['min_ms']} | {r['med_ms']} | {r['gbs']} | {r['pct']}% |" for r in rows]
    return out + [""]


def memory_plot(title: str, rows: list[dict[str, str]], prov: dict[str, str | None], png: Path) -> None:
    """Bars of state bytes per parameter, one per optimizer and state format."""
    with bar_figure([f"{r['optimizer']} {r['state']}" for r in rows], title, prov,
                    "optimizer state, bytes per parameter", png) as ax:
        ax.barh(list(range(len(rows))), [float(r["bpp"]) for r in rows], color="tab:blue")


def memory_section(results: Path, plot_dir: Path) -> list[str]:
    """State bytes per parameter from ``lowp_state_memory.txt``."""
    text = read(results / "lowp_state_memory.txt")
    out = ["## Memory: optimizer state, bytes per parameter", ""]
    if not text:
        return out + ["No `lowp_state_memory.txt` in the results.", ""]
    prov = read_provenance(text)
    out += [provenance_md(prov, ["bench/results/lowp_state_memory.txt"]), ""]
    for i, (title, rows) in enumerate(parse_state_memory(text)):
        png = plot_dir / f"state_memory_{i}.png"
        memory_plot(title, rows, prov, png)
        out += [f"### {title}", "", f"![state bytes per parameter]({plot_dir.name}/{png.name})", "",
                "| optimizer | state | state B/param |", "|---|---|---|"]
        out += [f"| {r['optimizer']} | {r['state']} | {r['bpp']} |" for r in rows] + [""]
    return out


def training_plot(title: str, rows: list[dict[str, str]], prov: dict[str, str | None], png: Path) -> None:
    """Stacked bars per contender: parameters, gradients, optimizer state (bytes per parameter)."""
    rows = [r for r in rows if "error" not in r]
    with bar_figure([f"{r['name']} {r['param']}/{r['state']}" for r in rows], title, prov,
                    "training state, bytes per parameter (no activations, no fp32 master copy)", png) as ax:
        y, left = list(range(len(rows))), [0.0] * len(rows)
        for key, label, color in (("param_bpp", "parameters", "tab:gray"), ("grad_bpp", "gradients", "tab:olive"),
                                  ("state_bpp", "optimizer state", "tab:blue")):
            vals = [float(r[key]) for r in rows]
            ax.barh(y, vals, left=left, label=label, color=color)
            left = [a + b for a, b in zip(left, vals)]
        ax.legend(fontsize=7, loc="lower right")


def training_state_section(results: Path, plot_dir: Path) -> list[str]:
    """Optimizer state and whole training state beside the peers, from ``training_state_memory.txt``."""
    text = read(results / "training_state_memory.txt")
    out = ["## Memory: whole training state beside the peers", ""]
    if not text:
        return out + ["No `training_state_memory.txt` in the results: not recorded.", ""]
    prov = read_provenance(text)
    out += [provenance_md(prov, ["bench/results/training_state_memory.txt"]), "",
            "Parameters + gradients + optimizer state, counted from the tensors allocated after one "
            "step; activations and any fp32 master copy are not included.", ""]
    for i, (title, rows) in enumerate(parse_training_state(text)):
        png = plot_dir / f"training_state_{i}.png"
        training_plot(title, rows, prov, png)
        out += [f"### {title}", "", f"![training state bytes per parameter]({plot_dir.name}/{png.name})", "",
                "| optimizer | params | state format | params B/param | grads B/param | state B/param | "
                "training state B/param |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            out.append(f"| {r['name']} | {r['param']} | does not run: {r['error']} | | | | |" if "error" in r else
                       f"| {r['name']} | {r['param']} | {r['state']} | {r['param_bpp']} | {r['grad_bpp']} | "
                       f"{r['state_bpp']} | {r['training_bpp']} |")
        out.append("")
    return out


def rl_section(results: Path) -> list[str]:
    """RL step time beside TRL's GRPOTrainer from ``rl_step.txt``."""
    text = read(results / "rl_step.txt")
    out = ["## RL step time beside TRL", ""]
    runs = parse_rl_step(text)
    if not runs:
        return out + ["No `rl_step.txt` result: no RL step time is recorded.", ""]
    out += [provenance_md(read_provenance(text), ["bench/results/rl_step.txt"]), "",
            "| KL β | signopt.rl s/step (min / median) | TRL | TRL s/step (min / median) | "
            "signopt.rl / TRL median |", "|---|---|---|---|---|"]
    for r in runs:
        trl = (r["trl"], f"{r['trl_min']} / {r['trl_med']}", r["ratio"]) if r["trl"] else \
            ("no TRL figure in the file", "-", "-")
        out.append(f"| {r['beta']} | {r['ours_min']} / {r['ours_med']} | {trl[0]} | {trl[1]} | {trl[2]} |")
    return out + [""]


def build(results: Path, out: Path) -> list[Path]:
    """Write the page and its plots; return the paths written."""
    plot_dir = out.parent / out.stem
    plot_dir.mkdir(parents=True, exist_ok=True)
    for old in plot_dir.glob("*.png"):
        old.unlink()
    rel = "bench/results"
    lines = ["# Performance", "",
             "Generated by `python bench/report.py` from the result files in `bench/results/` "
             "(what each file answers and the command that makes it: `bench/results/README.md`). "
             "Do not edit by hand: rerun the benchmark, then the report. Every figure below is "
             "copied from a result file; each table names the machine and versions its file records.",
             "", "`%` of streaming: the row's bandwidth over the in-place streaming bandwidth "
             "(`a.add_(b)`) sampled beside its own steps (CPU: min over min and median over median; "
             "GPU: min times).", ""]
    # step_cpu.txt: the default build (-march=native); step_cpu_<arch>.txt: the same machine with
    # the build for another -march (SIGNOPT_CXX_ARCH), e.g. x86-64-v3
    for path in sorted(results.glob("step_cpu*.txt")):
        cpu_text = read(path)
        if not cpu_text:
            continue
        arch = path.stem[len("step_cpu_"):] if path.stem != "step_cpu" else ""
        lines += step_section(f"CPU, -march={arch}" if arch else "CPU", parse_step(cpu_text),
                              read_provenance(cpu_text), [f"{rel}/{path.name}"], plot_dir, path.stem)
    for gdir in sorted(results.glob("gpu_*")):
        step_text, summary = read(gdir / "step_cuda.txt"), read(gdir / "summary.txt")
        if not step_text:
            continue
        prov = read_provenance(step_text, summary)
        name = prov["device"] or gdir.name
        lines += step_section(name, parse_step(step_text), prov,
                              [f"{rel}/{gdir.name}/step_cuda.txt", f"{rel}/{gdir.name}/summary.txt"],
                              plot_dir, f"step_{gdir.name}")
        gpu_text = read(gdir / "step_gpu.txt")
        lines += gpu_bandwidth_section(gpu_text, read_provenance(gpu_text, summary),
                                       f"{rel}/{gdir.name}/step_gpu.txt")
    lines += memory_section(results, plot_dir) + training_state_section(results, plot_dir) + rl_section(results)
    out.write_text("\n".join(lines).rstrip() + "\n")
    return [out, *sorted(plot_dir.glob("*.png"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    args = ap.parse_args()
    for path in build(args.results, args.out):
        print(path)


if __name__ == "__main__":
    main()

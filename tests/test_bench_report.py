"""``bench/report.py`` builds ``docs/performance.md`` and its plots from the committed result
files; every number on the page is a number some result file holds, every table names its
provenance, and the committed page is the one the current files give."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="bench/report.py plots with matplotlib (the rl extra)")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import report  # noqa: E402
from bench.provenance import provenance_line  # noqa: E402
from bench.results_parse import PROVENANCE_KEYS, read_provenance  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# a number standing alone: not part of a name such as H100, fp32, step_cpu_large.png or 2f15d1a
NUMBER = re.compile(r"(?<![\w.+-])[-+]?\d+(?:\.\d+)?(?![\w.]*[A-Za-z_\d])")


def numbers(text: str) -> set[str]:
    return set(NUMBER.findall(text))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("report") / "performance.md"
    return out, report.build(RESULTS, out)


def test_page_and_plots_are_written(built) -> None:
    page, written = built
    text = page.read_text()
    pngs = [p for p in written if p.suffix == ".png"]
    # one step table per CPU build (step_cpu.txt, step_cpu_<arch>.txt) and per GPU folder
    tables = len(list(RESULTS.glob("step_cpu*.txt"))) + sum(1 for d in RESULTS.glob("gpu_*")
                                                             if (d / "step_cuda.txt").exists())
    assert len([p for p in pngs if p.name.startswith("step_")]) == 2 * tables  # large and small
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, png
        assert f"]({page.stem}/{png.name})" in text, f"{png.name} not linked from the page"
    for peer in ("torch AdamW fused", "lion-pytorch Lion", "pytorch-optimizer Lion", "bitsandbytes Lion8bit"):
        assert f"| {peer} |" in text, peer
    assert "## RL step time beside TRL" in text and "## Memory" in text


def test_every_number_on_the_page_comes_from_a_result_file(built) -> None:
    page, _ = built
    source = "\n".join(p.read_text() for p in RESULTS.rglob("*.txt"))  # the records, not the index
    known = numbers(source)
    foreign = sorted(numbers(page.read_text()) - known)
    assert not foreign, f"numbers on the page found in no result file: {foreign}"


def test_every_table_names_its_provenance(built) -> None:
    page, _ = built
    text = page.read_text()
    sources = [ln for ln in text.splitlines() if ln.startswith("*Source:")]
    tables = text.count("|---|")
    assert sources and tables
    for line in sources:
        for label in ("device:", "CPU:", "CPU ISA:", "versions:", "torch threads:", "commit:", "date:"):
            assert label in line, (label, line)


def test_committed_page_is_current(built) -> None:
    page, _ = built
    committed = ROOT / "docs" / "performance.md"
    assert committed.read_text() == page.read_text(), "rerun python bench/report.py"


def test_provenance_line_round_trips() -> None:
    prov = read_provenance("header\n" + provenance_line() + "\nrest")
    assert all(prov[k] for k in PROVENANCE_KEYS), prov
    assert prov["device"] == "cpu" and "torch " in prov["versions"]


def test_missing_trl_figure_is_said_not_invented(tmp_path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    rl = (RESULTS / "rl_step.txt").read_text()
    (results / "rl_step.txt").write_text("\n".join(ln for ln in rl.splitlines() if "TRL" not in ln))
    page = tmp_path / "performance.md"
    report.build(results, page)
    text = page.read_text()
    assert "no TRL figure in the file" in text
    assert not re.search(r"\| 1\.16\.0 \|", text)

"""Every ``python`` code block of README.md and docs/*.md runs as written (docs/rl.md has its own
test). A block whose first line is ``# file: NAME.py ... run: torchrun ...`` is a distributed
script: it runs as a file under ``torchrun --standalone --nproc_per_node=2``, as the page says
(then exits without interpreter teardown: EXIT_WITHOUT_TEARDOWN).
Any other block runs in this process, in a fresh namespace, from a temporary working directory."""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN_TEST = {"rl.md"}  # docs/rl.md: tested by its own test
PAGES = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in OWN_TEST)
SCRIPT = re.compile(r"# file: (\S+\.py) +run: torchrun --standalone --nproc_per_node=2 \1\n")
# Appended to a distributed script once its own code has run to the end: exit without the
# interpreter's teardown, whose gloo destructors (torch 2.13, CPU) abort a finished run with SIGABRT
# ("terminate called without an active exception") in about 1 run in 10, with or without signopt
# (as tests/distributed/dist_workers.py does).
EXIT_WITHOUT_TEARDOWN = "\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_sys.stderr.flush()\n_os._exit(0)\n"


def blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


CASES = [(page.relative_to(ROOT).as_posix(), i, code) for page in PAGES for i, code in enumerate(blocks(page))]


def test_optimizer_reference_has_an_example_per_optimizer() -> None:
    code = "\n".join(blocks(ROOT / "docs" / "optimizers.md"))
    for name in ("SignSGD", "Signum", "Lion(", "LionKappa", "StoSignSGD", "SignConversion(",
                 "SignConversionWrapper"):
        assert f"signopt.{name}" in code, name


def test_readme_and_docs_have_examples() -> None:
    pages = {c[0] for c in CASES}
    assert {"README.md", "docs/optimizers.md", "docs/numerics.md", "docs/distributed.md",
            "docs/trainers.md", "docs/backends.md"} <= pages, pages


def missing_modules(code: str) -> list[str]:
    """Top-level modules the block imports that are not installed here (optional integrations)."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


@pytest.mark.parametrize("page,i,code", CASES, ids=[f"{c[0]}[{c[1]}]" for c in CASES])
def test_code_block_runs(page: str, i: int, code: str, tmp_path: Path, monkeypatch) -> None:
    missing = missing_modules(code)
    if missing:
        pytest.skip(f"{page}[{i}] imports {', '.join(missing)}, not installed here (pip install {' '.join(missing)})")
    script = SCRIPT.match(code)
    if script:
        path = tmp_path / script.group(1)
        path.write_text(code + EXIT_WITHOUT_TEARDOWN)
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(path)]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{page}[{i}] failed:\n{proc.stdout}\n{proc.stderr}"
        return
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page}[{i}]", "exec"), {"__name__": f"doc_example_{i}"})


PENDING = {ROOT / "docs" / "rl.md"}  # written on another branch (the RL engineer's); linked already


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES + [ROOT / "bench" / "results" / "README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            path = (page.parent / target).resolve()
            if not path.exists() and path not in PENDING:
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken

"""The README's ``## API`` python examples run as written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def api_blocks() -> list[str]:
    """Python code blocks between ``## API`` and the next level-2 heading."""
    text = README.read_text()
    start = text.index("\n## API")
    nxt = re.search(r"\n## (?!#)", text[start + 1:])
    section = text[start: start + 1 + nxt.start()] if nxt else text[start:]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


BLOCKS = api_blocks()


def test_api_section_has_an_example_per_optimizer() -> None:
    code = "\n".join(BLOCKS)
    for name in ("SignSGD", "Signum", "Lion(", "LionKappa", "StoSignSGD", "SignConversion(",
                 "SignConversionWrapper"):
        assert f"signopt.{name}" in code, name


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_api_example_runs(i: int) -> None:
    exec(compile(BLOCKS[i], f"README.md:API[{i}]", "exec"), {"__name__": f"readme_api_{i}"})

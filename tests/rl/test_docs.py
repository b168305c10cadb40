"""Every code block of docs/rl.md runs: python blocks in a fresh interpreter, bash blocks with
``bash -e``, each in an empty temporary folder."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "rl.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
BLOCKS = [(m.group(1), m.group(2)) for m in FENCE.finditer(DOC.read_text())]


def test_every_block_has_a_runnable_language():
    assert len(BLOCKS) >= 4
    assert {lang for lang, _ in BLOCKS} <= {"python", "bash"}, "a block this test cannot run"


@pytest.mark.parametrize("lang,code", BLOCKS, ids=[f"block{k}-{lang}" for k, (lang, _) in enumerate(BLOCKS)])
def test_doc_block_runs(lang, code, tmp_path):
    if "from trl import" in code and importlib.util.find_spec("trl") is None:
        print("docs/rl.md TRL block: trl is not installed (pip install trl); skipping")
        pytest.skip("trl is not installed (pip install trl)")
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-e", "-o", "pipefail", "-c", code]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

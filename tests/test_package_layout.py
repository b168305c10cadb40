"""The top-level ``kernels/`` folder never shadows another distribution named ``kernels``, and
``signopt.kernels`` / ``signopt.csrc`` are signopt's in every way signopt can be found: the
current install, an uninstalled checkout, and a built wheel."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Drops setuptools' editable finder, so that only the checkout on sys.path ('' = the cwd) is left.
UNINSTALLED = "import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
WHERE = ("import signopt, signopt.kernels.launch as launch, signopt.build as build; "
         "print(signopt.__file__); print(launch.__file__); print(build.csrc_dir())")


def _python(code: str, cwd: Path, pythonpath: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, *extra, "-c", code], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def _stand_in(site: Path) -> Path:
    """A distribution named ``kernels`` (a regular package with its dist-info) in ``site``."""
    pkg = site / "kernels"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("WHO = 'stand-in'\n")
    info = site / "kernels-0.19.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.19.1\n")
    return pkg


def test_kernels_folder_is_not_a_regular_package():
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert not (ROOT / "csrc" / "__init__.py").exists()


def test_import_kernels_from_the_root_gives_the_other_distribution(tmp_path):
    pkg = _stand_in(tmp_path / "site")
    lines = _python("import kernels; print(kernels.__file__); print(kernels.WHO)", ROOT, str(tmp_path / "site"))
    assert lines == [str(pkg / "__init__.py"), "stand-in"]
    # signopt.kernels stays signopt's beside it
    lines = _python("import kernels; " + WHERE, ROOT, str(tmp_path / "site"))
    assert lines[1] == str(ROOT / "kernels" / "launch.py")


@pytest.mark.parametrize("cwd", ["root", "elsewhere"])
def test_signopt_kernels_in_the_current_install(cwd, tmp_path):
    lines = _python(WHERE, ROOT if cwd == "root" else tmp_path)
    assert Path(lines[1]).name == "launch.py" and Path(lines[1]).parent.name == "kernels"
    assert (Path(lines[2]) / "ops.cpp").is_file()


def test_signopt_kernels_in_an_uninstalled_checkout():
    lines = _python(UNINSTALLED + WHERE, ROOT)
    assert lines == [str(ROOT / "signopt" / "__init__.py"), str(ROOT / "kernels" / "launch.py"), str(ROOT / "csrc")]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to copy the tracked tree")
def test_signopt_kernels_in_a_wheel(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools in this environment")
    src = tmp_path / "src"
    # the tracked files only (a built tree or caches in the checkout must not leak into the wheel)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("signopt-*.whl"))
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    _stand_in(tmp_path / "site")
    lines = _python(UNINSTALLED + "import kernels; print(kernels.WHO); " + WHERE, tmp_path,
                    f"{target}{os.pathsep}{tmp_path / 'site'}")
    assert lines == ["stand-in", str(target / "signopt" / "__init__.py"),
                     str(target / "signopt" / "kernels" / "launch.py"), str(target / "signopt" / "csrc")]


def test_import_signopt_leaves_the_optional_wings_alone():
    """``import signopt`` loads the core only: not the RL trainer, the FP8 linear layer, the
    distributed helpers, Triton or transformers (and compiles nothing)."""
    wings = ("signopt.rl", "signopt.fp8_linear", "signopt.distributed", "signopt.kernels", "triton",
             "transformers", "signopt.backends.cpp_backend", "signopt.backends.triton_backend")
    code = ("import sys, signopt; wings = " + repr(wings) + "; "
            "print([m for m in sys.modules if any(m == w or m.startswith(w + '.') for w in wings)])")
    assert _python(code, ROOT) == ["[]"]


def test_no_binary_wheels_committed():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert [f for f in files.splitlines() if f.endswith((".whl", ".so", ".tar.gz"))] == []

"""The command line keeps a run: resume, output folders, flag validation before model work, help."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from signopt.rl import trainer as trainer_module
from signopt.rl.advantages import ADVANTAGES
from signopt.rl.cli import main
from signopt.rl.config import FIELD_HELP, RLConfig
from signopt.rl.losses import LOSSES
from signopt.rl.optimizers import OPTIMIZERS
from signopt.rl.resume import STATE_FILE
from signopt.rl.tasks import TASKS

from test_trainer import small_config, tiny_path  # noqa: F401  (module-scoped fixture)


def run_args(tiny_path, out, *extra):
    return ["train", "--model", tiny_path, "--digits", "1", "--steps", "4", "--prompts-per-step", "2",
            "--group-size", "4", "--eval-size", "8", "--eval-every", "0", "--progress", "false",
            "--lr", "3e-3", "--lr-schedule", "linear", "--out", str(out), *extra]


def test_resume_takes_the_runs_config_and_counts_the_whole_run(tiny_path, tmp_path, monkeypatch):
    out = tmp_path / "run"
    step = trainer_module.Trainer.rl_step

    def dies_after_two(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(trainer_module.Trainer, "rl_step", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        main(run_args(tiny_path, out, "--save-every", "2"))
    monkeypatch.setattr(trainer_module.Trainer, "rl_step", step)
    state = torch.load(out / "checkpoint" / STATE_FILE, weights_only=True)
    assert state["step"] == 2 and state["rl_seconds"] > 0

    assert main(["train", "--resume", str(out / "checkpoint")]) == 0  # no other flag: the run's own config
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the run's 4 steps, not the default 2000
    assert [r["lr"] for r in rows] == pytest.approx([3e-3 * f for f in (1.0, 0.75, 0.5, 0.25)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["lr"] == 3e-3
    assert summary["rl_seconds"] > state["rl_seconds"]  # the first session's time is included


def test_resume_rejects_contradicting_flags(tiny_path, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(tiny_path, out, "--steps", "1")) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(SystemExit, match=r"--lr 0.5 contradicts the checkpoint's lr=0.003") as e:
        main(["train", "--resume", str(out / "checkpoint"), "--lr", "0.5", "--progress", "false"])
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit, match=r"--steps 9 contradicts the checkpoint's steps=1"):
        main(["train", "--resume", str(out / "checkpoint"), "--steps", "9"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched
    cfg = small_config(tiny_path, steps=1, out=str(out), lr=0.5, resume=str(out / "checkpoint"))
    with pytest.raises(ValueError, match="contradicts the checkpoint's lr=0.003"):
        trainer_module.Trainer(cfg)  # the API checks too


def test_no_out_writes_to_a_printed_timestamped_folder(tiny_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = run_args(tiny_path, "x", "--steps", "1")
    args = args[: args.index("--out")]
    assert main(args) == 0
    err = capsys.readouterr().err
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and f"writing to {Path('runs') / runs[0].name}" in err
    assert (runs[0] / "summary.json").is_file() and (runs[0] / "metrics.jsonl").is_file()


def test_existing_non_empty_out_is_not_overwritten(tiny_path, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"out=.* exists and is not empty"):
        main(run_args(tiny_path, out, "--steps", "1"))
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("flags,message", [
    (["--lr", "-1"], "lr=-1.0 must be > 0"),
    (["--lr", "nan"], "lr=nan must be a finite number"),
    (["--loss-knobs", '{"bogus": 1}'], "loss_knobs: loss='grpo' does not take bogus; allowed knobs: clip_eps"),
    (["--model", "/missing/path"], "model='/missing/path': the path does not exist"),
    (["--optimizer-kwargs", '{"betaz": [0.9, 0.99]}'], "optimizer_kwargs: optimizer='lion' does not take betaz"),
    (["--temperature", "inf"], "temperature=inf must be a finite number"),
    (["--weight-decay", "-0.1"], "weight_decay=-0.1 must be ≥ 0"),
    (["--overlong-cache", "9"], "overlong_cache=9 must be in \\[0, max_new_tokens=4\\]"),
    (["--resume", "/missing/ckpt"], "resume='/missing/ckpt'"),
])
def test_bad_flags_fail_before_model_work(flags, message, monkeypatch):
    def no_model_work(*a, **k):
        raise AssertionError("model work started")

    monkeypatch.setattr(trainer_module.Trainer, "__init__", no_model_work)
    with pytest.raises(SystemExit, match=message) as e:
        main(["train", *flags])
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)


def test_bad_flag_is_one_line_from_the_shell():
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "signopt.rl", "train", "--lr", "-1"], capture_output=True,
                          text=True)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: lr=-1.0 must be > 0"]
    assert elapsed < 20  # no warm start (~50 s) or model build; the import of torch dominates


def test_help_describes_every_flag_and_lists_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse re-wraps lines
    assert set(FIELD_HELP) == {f for f in RLConfig.__dataclass_fields__}
    for name, help_text in FIELD_HELP.items():
        assert "--" + name.replace("_", "-") in text and "".join(help_text.split()) in text
    for choices in (LOSSES, ADVANTAGES, OPTIMIZERS, TASKS):
        assert all(c in text for c in choices)


def test_summary_and_metrics_are_written_before_the_plot(tiny_path, tmp_path, monkeypatch):
    def broken_plot(*a, **k):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(trainer_module, "plot_metrics", broken_plot)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="plot failed"):
        main(run_args(tiny_path, out, "--steps", "1"))
    assert (out / "summary.json").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_missing_plotting_dependency_is_reported_at_the_start(tiny_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer_module, "missing_dependency", lambda: "matplotlib is not installed")
    tr = trainer_module.Trainer(small_config(tiny_path, steps=1, out=str(tmp_path / "run")))
    assert "matplotlib is not installed; curves.png will not be written" in capsys.readouterr().err
    tr.train()
    assert (tmp_path / "run" / "summary.json").is_file() and not (tmp_path / "run" / "curves.png").exists()

"""Continuing a run from its checkpoint: the run's own config, and the flags that may differ."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from .config import RLConfig, coerce_values

STATE_FILE = "trainer_state.pt"
# Fields that only say where and how a run reports; every other field comes from the checkpoint.
RESUME_FREE = ("out", "progress", "resume", "threads", "save_every", "step_stats")


def saved_config(checkpoint: str | Path) -> dict:
    """The config dict stored in ``checkpoint``/trainer_state.pt."""
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise ValueError(f"resume={str(checkpoint)!r} is not a run's checkpoint folder (no {STATE_FILE} in it)")
    return torch.load(path, weights_only=True, mmap=True)["config"]


def contradictions(saved: dict, given: dict) -> list[str]:
    """``field: given value contradicts the checkpoint's value`` for each given field outside
    :data:`RESUME_FREE` whose value differs from the checkpoint's."""
    return [f"--{k.replace('_', '-')} {v!r} contradicts the checkpoint's {k}={saved.get(k)!r}"
            for k, v in given.items() if k not in RESUME_FREE and saved.get(k) != v]


def resume_config(checkpoint: str, given: dict) -> RLConfig:
    """The config of the run ``checkpoint`` belongs to, with the fields of :data:`RESUME_FREE`
    taken from ``given`` (typed values of the flags set); ``out`` defaults to the run's own."""
    saved = saved_config(checkpoint)
    given = coerce_values(given)
    bad = contradictions(saved, given)
    if bad:
        raise ValueError("; ".join(bad))
    merged = {f.name: saved[f.name] for f in fields(RLConfig) if f.name in saved}
    merged.update({k: v for k, v in given.items() if k in RESUME_FREE})
    merged["resume"] = str(checkpoint)
    return RLConfig(**merged).validate()

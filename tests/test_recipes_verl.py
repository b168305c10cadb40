"""The verl snippet of docs/trainers.md builds a working signopt optimizer. verl is not installed
here: ``build`` does what verl's ``build_optimizer`` (verl/workers/config/optimizer.py) does with
an FSDP optimizer config: import ``optimizer_impl``, take the class named ``optimizer``, pass
``lr`` and ``weight_decay``, ``betas`` only for a class whose name contains "adam" or
"ademamix", then every key of ``override_optimizer_config``."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

import signopt

yaml = pytest.importorskip("yaml", reason="reading the snippet needs PyYAML")

PAGE = Path(__file__).resolve().parents[1] / "docs" / "trainers.md"


def snippet() -> dict:
    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/trainers.md should hold one yaml block (the verl config)"
    return yaml.safe_load(blocks[0])["actor_rollout_ref"]["actor"]["optim"]


def build(params, optim: dict, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    """verl's build_optimizer, given verl's default betas for the config's unset ``betas``."""
    kwargs = {"lr": optim["lr"], "weight_decay": optim["weight_decay"]}
    name = optim["optimizer"].lower()
    if "adam" in name or "ademamix" in name:
        kwargs["betas"] = optim.get("betas", betas)
    kwargs.update(optim.get("override_optimizer_config") or {})
    cls = getattr(importlib.import_module(optim["optimizer_impl"]), optim["optimizer"])
    return cls(params, **kwargs)


def test_verl_snippet_builds_and_steps_signopt_lion() -> None:
    optim = snippet()
    model = torch.nn.Linear(8, 2)
    opt = build(model.parameters(), optim)
    assert isinstance(opt, signopt.Lion)
    group = opt.param_groups[0]
    assert group["lr"] == optim["lr"] and group["weight_decay"] == optim["weight_decay"]
    assert tuple(group["betas"]) == (0.9, 0.99) and group["state_dtype"] == "bf16"
    model(torch.randn(4, 8)).sum().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(model.weight, before)


def test_without_override_lion_keeps_its_own_betas() -> None:
    optim = {k: v for k, v in snippet().items() if k != "override_optimizer_config"}
    opt = build(torch.nn.Linear(8, 2).parameters(), optim)
    assert tuple(opt.param_groups[0]["betas"]) == (0.9, 0.99)  # verl passes AdamW's betas only to Adam*

"""Command line: ``python -m signopt.rl train [--config FILE] [--out DIR] [--<field> VALUE ...]``.

Every :class:`~signopt.rl.config.RLConfig` field is a flag (``--prompts-per-step 8``;
``--loss-knobs '{"beta": 0.04}'`` takes JSON). Flags override the config file, which overrides
the defaults; ``--resume DIR/checkpoint`` takes the run's config from the checkpoint instead. Every
flag is checked before the model is touched; an error is one line on stderr (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

from .config import FIELD_HELP, RLConfig, check_out_dir, config_from, read_config_file

JSON_FIELDS = ("loss_knobs", "optimizer_kwargs")
RUNS_DIR = "runs"


def _default(f) -> str:
    value = f.default_factory() if f.default is MISSING else f.default
    return "none" if value is None else json.dumps(value) if isinstance(value, dict) else str(value)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m signopt.rl", description="GRPO-family RL fine-tuning with signopt "
                                "optimizers")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run RL training (no arguments: the built-in main job)",
                           description="Train with the RL loop. With no arguments: the built-in main job. Booleans "
                           "take true/false; JSON flags take an object.")
    train.add_argument("--config", help="a .json or .toml file of the fields below (flags override it)")
    for f in fields(RLConfig):
        train.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar=f.name.upper(),
                           help=f"{FIELD_HELP[f.name]} (default: {_default(f)})".replace("%", "%%"))
    return p


def _timestamped_out() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out, k = Path(RUNS_DIR) / stamp, 1
    while out.exists():
        out, k = Path(RUNS_DIR) / f"{stamp}-{k}", k + 1
    return str(out)


def build_config(args: dict) -> RLConfig:
    """The run's config from parsed flags (values still strings); raises ValueError."""
    config_file = args.pop("config")
    for name in JSON_FIELDS:
        if args.get(name) is not None:
            try:
                args[name] = json.loads(args[name])
            except json.JSONDecodeError as e:
                raise ValueError(f"--{name.replace('_', '-')} must be a JSON object: {e.msg}") from None
    given = {k: v for k, v in args.items() if v is not None}
    if given.get("resume"):
        from .resume import resume_config  # reads the checkpoint's config only

        if config_file is not None:
            given = {**read_config_file(config_file), **given}
        cfg = resume_config(given.pop("resume"), given)
    else:
        cfg = config_from(config_file, given)
    if cfg.out is None:
        cfg.out = _timestamped_out()
    check_out_dir(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    args.pop("command")
    try:
        cfg = build_config(args)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"signopt.rl: writing to {cfg.out}", file=sys.stderr)
    from .trainer import Trainer  # heavy imports only once the arguments are valid

    summary = Trainer(cfg).train()
    print(json.dumps({k: summary[k] for k in ("accuracy_before", "accuracy_after", "steps")} | {"out": cfg.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

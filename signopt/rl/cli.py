"""Command line: ``python -m signopt.rl train [--config FILE] [--out DIR] [--<field> VALUE ...]``.

Every :class:`~signopt.rl.config.RLConfig` field is a flag (``--prompts-per-step 8``;
``--loss-knobs '{"beta": 0.04}'`` takes JSON). Flags override the config file, which overrides
the defaults. With no arguments, ``train`` runs the built-in main job.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from .config import RLConfig, config_from

JSON_FIELDS = ("loss_knobs", "optimizer_kwargs")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="signopt-rl", description="GRPO-family RL fine-tuning with signopt optimizers")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run RL training (no arguments: the built-in main job)")
    train.add_argument("--config", help="a .json or .toml file of RLConfig fields")
    for f in fields(RLConfig):
        train.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar=f.name.upper(),
                           help="a JSON object" if f.name in JSON_FIELDS
                           else f"(default: {f.default if f.default is not None else 'none'})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    args.pop("command")
    config_file = args.pop("config")
    for name in JSON_FIELDS:
        if args.get(name) is not None:
            try:
                args[name] = json.loads(args[name])
            except json.JSONDecodeError as e:
                raise SystemExit(f"--{name.replace('_', '-')} must be a JSON object: {e.msg}") from None
    try:
        cfg = config_from(config_file, args)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    from .trainer import Trainer  # heavy imports only once the arguments are valid

    summary = Trainer(cfg).train()
    print(json.dumps({k: summary[k] for k in ("accuracy_before", "accuracy_after", "steps")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``signlock`` command line.

User errors (``SignlockError``) print one line, ``signlock: error: …``, and exit with status 2;
anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from signlock.search_spaces.presets import TRIAL_PRESETS, trial_preset
from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError, SignlockError

DEFAULT_RUNS_DIR = Path("signlock-runs")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "init.targets=[a, b]"]`` → dotted overrides, values parsed as YAML."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--set", pair, "KEY=VALUE with a dotted key, e.g. optim.lr=1e-3")
        overrides[key.strip()] = yaml.safe_load(raw)
    return overrides


def load_trial_config(args: argparse.Namespace) -> TrialConfig:
    if (args.config is None) == (args.preset is None):
        raise ConfigError("--config/--preset", None, "exactly one of --config FILE, --preset NAME")
    if args.preset is not None:
        cfg = trial_preset(args.preset)
    else:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError("--config", str(path), "an existing .json or .yaml file")
        cfg = TrialConfig.from_file(path)
    overrides = parse_overrides(args.set)
    if args.steps is not None:
        overrides["steps"] = args.steps
    return cfg.with_overrides(overrides) if overrides else cfg


def cmd_train(args: argparse.Namespace) -> int:
    from signlock.trainables.trainer import run_trial

    cfg = load_trial_config(args)
    run_dir = Path(args.run_dir) if args.run_dir else DEFAULT_RUNS_DIR / cfg.name
    summary = run_trial(cfg, run_dir, resume=not args.no_resume, progress=not args.quiet)
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"run directory: {run_dir}", file=sys.stderr)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name in TRIAL_PRESETS:
        doc = (TRIAL_PRESETS[name].__doc__ or "").strip().splitlines()
        print(f"{name:24s} {doc[0] if doc else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signlock", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run one trial in-process (no Ray, no MLflow)")
    train.add_argument("--config", help="trial config file (.json or .yaml)")
    train.add_argument("--preset", help="a trial preset name (see `signlock presets`)")
    train.add_argument("--run-dir", help=f"output directory (default {DEFAULT_RUNS_DIR}/NAME)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=1e-3 (repeatable)",
    )
    train.add_argument("--steps", type=int, help="shorthand for --set steps=N")
    train.add_argument(
        "--no-resume",
        action="store_true",
        help="ignore an existing checkpoint in the run directory",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    presets = commands.add_parser("presets", help="list trial presets")
    presets.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SignlockError as error:
        print(f"signlock: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

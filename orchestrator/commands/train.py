"""``signlock train``: one trial in this process, no Ray, no MLflow."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from signlock.orchestrator.commands.options import DEFAULT_RUNS_DIR, add_set_arg
from signlock.search_spaces.overrides import parse_assignments
from signlock.search_spaces.presets import trial_preset
from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError, InputNotFoundError


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="run one trial in-process (no Ray, no MLflow)")
    train.add_argument("--config", help="trial config file (.json or .yaml)")
    train.add_argument("--preset", help="a trial preset name (see `signlock presets`)")
    train.add_argument("--run-dir", help=f"output directory (default {DEFAULT_RUNS_DIR}/NAME)")
    add_set_arg(train, "override a config field, e.g. --set optim.lr=1e-3 (repeatable)")
    train.add_argument("--steps", type=int, help="shorthand for --set steps=N")
    train.add_argument(
        "--no-resume",
        action="store_true",
        help="ignore an existing checkpoint in the run directory",
    )
    train.add_argument(
        "--workers-per-trial",
        type=int,
        default=1,
        metavar="N",
        help="shard the trial with FSDP2 over N worker processes of this machine (gloo on CPU, "
        "one GPU each on CUDA; data.batch_size must be a multiple of N)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=run)


def load_trial_config(args: argparse.Namespace) -> TrialConfig:
    if (args.config is None) == (args.preset is None):
        raise ConfigError("--config/--preset", None, "exactly one of --config FILE, --preset NAME")
    overrides = parse_assignments(args.set)
    if args.preset is not None:
        cfg = trial_preset(args.preset)
    elif not Path(args.config).is_file():
        raise InputNotFoundError(args.config)
    else:
        cfg = TrialConfig.from_file(args.config)
    if args.steps is not None:
        overrides["steps"] = args.steps
    return cfg.with_overrides(overrides) if overrides else cfg


def run(args: argparse.Namespace) -> int:
    from signlock.trainables.sharded import is_sharded_run
    from signlock.trainables.trainer import Trial

    cfg = load_trial_config(args)
    run_dir = Path(args.run_dir) if args.run_dir else DEFAULT_RUNS_DIR / cfg.name
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("--run-dir", str(run_dir), "a directory (this is a file)")
    if args.workers_per_trial != 1 or (not args.no_resume and is_sharded_run(run_dir)):
        return _run_on_workers(args, cfg, run_dir)
    trial = Trial(cfg, run_dir, progress=not args.quiet)
    restored = None if args.no_resume else trial.restore()
    if restored is not None:
        for skipped in restored.skipped:
            print(f"{skipped}; using {restored.path.name}", file=sys.stderr)
        print(f"resuming {run_dir} from step {restored.step}", file=sys.stderr)
    summary = trial.run(resume=False)
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"run directory: {run_dir}", file=sys.stderr)
    return 0


def _run_on_workers(args: argparse.Namespace, cfg: TrialConfig, run_dir: Path) -> int:
    from signlock.trainables.launch import run_on_local_workers

    summary = run_on_local_workers(
        cfg, run_dir, args.workers_per_trial, resume=not args.no_resume, progress=not args.quiet
    )
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"run directory: {run_dir}", file=sys.stderr)
    return 0

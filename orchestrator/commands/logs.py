"""``signlock logs``: a submitted sweep's job output (every node's stdout and stderr)."""

from __future__ import annotations

import argparse

from signlock.orchestrator.commands.options import add_sweep_arg, sweep_dir_of


def register(commands: argparse._SubParsersAction) -> None:
    logs = commands.add_parser("logs", help="a SLURM sweep's job output (stdout and stderr)")
    add_sweep_arg(logs)
    logs.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    logs.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from signlock.orchestrator.backends import backend_of
    from signlock.trainables.records import SweepRecord

    sweep_dir = sweep_dir_of(args)
    backend_of(SweepRecord.read(sweep_dir)).logs(sweep_dir, follow=args.follow)
    return 0

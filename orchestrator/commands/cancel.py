"""``signlock cancel``: cancel a submitted sweep's jobs; ``resume`` continues it."""

from __future__ import annotations

import argparse

from signlock.orchestrator.commands.options import add_sweep_arg, sweep_dir_of


def register(commands: argparse._SubParsersAction) -> None:
    cancel = commands.add_parser("cancel", help="scancel a SLURM sweep's job (resumable)")
    add_sweep_arg(cancel)
    cancel.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from signlock.orchestrator.backends import backend_of
    from signlock.trainables.records import SweepRecord

    sweep_dir = sweep_dir_of(args)
    job_id = backend_of(SweepRecord.read(sweep_dir)).cancel(sweep_dir)
    print(
        f"cancelled SLURM job {job_id}; continue with "
        f"`signlock resume {sweep_dir.name} --backend slurm`"
    )
    return 0

"""``signlock status``: trials by state and the best so far (and the state of the sweep's job)."""

from __future__ import annotations

import argparse

from signlock.orchestrator.commands.options import add_sweep_arg, sweep_dir_of


def register(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="trials by state and the best so far")
    add_sweep_arg(status)
    status.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from signlock.orchestrator.backends import backend_of
    from signlock.orchestrator.status import format_status, sweep_status
    from signlock.trainables.records import SweepRecord

    sweep_dir = sweep_dir_of(args)
    record = SweepRecord.read(sweep_dir)
    job_line = backend_of(record).state(record)
    if job_line is not None:
        print(job_line)
    print(format_status(sweep_status(sweep_dir)))
    return 0

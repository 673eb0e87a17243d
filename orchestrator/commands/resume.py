"""``signlock resume``: continue an interrupted sweep (its MLflow store is the one it started
with), here or as a new job of its backend."""

from __future__ import annotations

import argparse

from signlock.orchestrator.commands.options import SWEEP_ARG_HELP, sweep_options
from signlock.orchestrator.commands.runtime import add_sweep_runtime_args, finish, selected_backend


def register(commands: argparse._SubParsersAction) -> None:
    resume = commands.add_parser(
        "resume", help="continue an interrupted sweep (its MLflow store is the one it started with)"
    )
    resume.add_argument("sweep", help=SWEEP_ARG_HELP)
    errored = resume.add_mutually_exclusive_group()
    errored.add_argument(
        "--restart-errored", action="store_true", help="rerun errored trials from scratch"
    )
    errored.add_argument("--skip-errored", action="store_true", help="leave errored trials")
    add_sweep_runtime_args(resume)
    resume.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from signlock.orchestrator.commands.flags import given_request_fields
    from signlock.orchestrator.ray_tune import Restore

    backend = selected_backend(args)
    restore = Restore(resume_errored=not args.skip_errored, restart_errored=args.restart_errored)
    request_fields = (
        given_request_fields(args, backend.request_type) if backend.request_type else {}
    )
    return finish(args, backend.resubmit(args.sweep, sweep_options(args), request_fields, restore))

"""What ``sweep`` and ``resume`` share: where sweeps live, which Ray, which backend (its flags
generated from the backend's request dataclass), and what to print once a sweep ran or was
submitted."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from signlock.orchestrator.backends import Backend, Submitted, backend_for
from signlock.orchestrator.commands.flags import add_request_flags, refuse_request_flags
from signlock.orchestrator.commands.options import DEFAULT_SWEEPS_DIR, exit_status
from signlock.trainables.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

# --backend NAME: local (its own Ray, or --address's) or slurm (--slurm-mode picks the kind)
BACKEND_FLAGS = ("local", "slurm")


def _request_types() -> dict[str, type]:
    """The request dataclass of each --backend value that has one."""
    named = {flag: backend_for(flag, address=None, mode=None) for flag in BACKEND_FLAGS}
    return {flag: b.request_type for flag, b in named.items() if b.request_type is not None}


def add_sweep_runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=str(DEFAULT_SWEEPS_DIR),
        help=f"directory holding sweeps (default {DEFAULT_SWEEPS_DIR})",
    )
    parser.add_argument(
        "--address", help="an existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT"
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long --address may take to answer (default 30)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="Ray Tune's tables, worker logs")
    _add_backend_args(parser)


def _add_backend_args(parser: argparse.ArgumentParser) -> None:
    slurm = parser.add_argument_group("SLURM (--backend slurm: one job, a Ray cluster inside)")
    slurm.add_argument("--backend", choices=BACKEND_FLAGS, default="local")
    for request_type in _request_types().values():
        add_request_flags(slurm, request_type)
    slurm.add_argument("--wait", action="store_true", help="wait for the job and print the results")


def selected_backend(args: argparse.Namespace) -> Backend:
    """The backend the flags ask for; another backend's flags are refused in one line."""
    backend = backend_for(args.backend, address=args.address, mode=getattr(args, "mode", None))
    for flag, request_type in _request_types().items():
        if flag != args.backend:
            refuse_request_flags(args, request_type, flag)
    if backend.request_type is None and args.wait:
        raise ConfigError("--wait", True, "only with --backend " + " or ".join(_request_types()))
    return backend


def finish(args: argparse.Namespace, submitted: Submitted) -> int:
    """Print what ran (its trials and exit status) or what was submitted (and wait for it with
    ``--wait``)."""
    from signlock.orchestrator.sweep import print_results

    sweep_dir = submitted.sweep_dir
    table = submitted.table
    if submitted.job_id is not None:
        print(f"submitted SLURM job {submitted.job_id} for sweep {sweep_dir.name} ({sweep_dir})")
        if not args.wait:
            print(
                f"follow it with `signlock status {sweep_dir.name}` or "
                f"`signlock logs {sweep_dir.name} --follow`",
                file=sys.stderr,
            )
            return 0
        table = _wait(sweep_dir)
    assert table is not None
    print_results(table, sweep_dir)
    return exit_status(table, _planned(sweep_dir))


def _wait(sweep_dir: Path) -> pd.DataFrame:
    from signlock.orchestrator.submit import wait_for_job

    return wait_for_job(sweep_dir)


def _planned(sweep_dir: Path) -> int:
    from signlock.trainables.records import SweepRecord

    return SweepRecord.read(sweep_dir).n_trials

"""Flags and conversions shared by several commands (storage, tracking, sweep runtime, exit
status), so each command module says only what is its own."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signlock.search_spaces.overrides import parse_assignments
from signlock.trainables.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from signlock.orchestrator.sweep import SweepOptions
    from signlock.search_spaces.plan import SweepPlan
    from signlock.search_spaces.spec import SweepSpec

DEFAULT_RUNS_DIR = Path("signlock-runs")
DEFAULT_SWEEPS_DIR = DEFAULT_RUNS_DIR / "sweeps"
SWEEP_ARG_HELP = "sweep name (under --storage) or sweep directory"


def add_sweep_arg(parser: argparse.ArgumentParser) -> None:
    """The positional SWEEP and ``--storage`` of every command that reads one sweep."""
    parser.add_argument("sweep", help=SWEEP_ARG_HELP)
    parser.add_argument("--storage", default=str(DEFAULT_SWEEPS_DIR))


def sweep_dir_of(args: argparse.Namespace) -> Path:
    """The directory of the sweep ``add_sweep_arg``'s flags name (one line when there is none)."""
    from signlock.orchestrator.sweep import storage_path, sweep_dir_for

    return sweep_dir_for(args.sweep, storage_path(args.storage))


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        help=f"MLflow tracking URI (default sqlite:///{DEFAULT_RUNS_DIR}/mlflow.db)",
    )
    parser.add_argument("--experiment", default="signlock", help="MLflow experiment name")


def add_gpu_memory_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpu-memory",
        metavar="SIZE",
        help="memory of the GPU each trial gets (e.g. 80GB): refuse trials predicted not to fit",
    )


def add_set_arg(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def tracking_uri(args: argparse.Namespace) -> str:
    from signlock.orchestrator.tracking import absolute_tracking_uri, default_tracking_uri

    if getattr(args, "tracking_uri", None):
        return absolute_tracking_uri(args.tracking_uri)
    return default_tracking_uri(DEFAULT_RUNS_DIR)


def sweep_options(args: argparse.Namespace, **extra: Any) -> SweepOptions:
    from signlock.orchestrator.sweep import DEFAULT_EXPERIMENT, SweepOptions, storage_path

    return SweepOptions(
        storage=storage_path(args.storage),
        tracking_uri=tracking_uri(args),
        experiment=getattr(args, "experiment", DEFAULT_EXPERIMENT),
        address=args.address,
        progress=not args.quiet,
        verbose=args.verbose,
        connect_timeout=args.connect_timeout,
        **extra,
    )


def add_workers_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers-per-trial",
        type=int,
        metavar="N",
        help="FSDP2 workers sharding each trial (default: the spec's resources.workers_per_trial)",
    )


def load_spec(args: argparse.Namespace) -> SweepSpec:
    """The spec named by ``args.spec`` with ``--set`` and (where the command has it)
    ``--workers-per-trial`` applied."""
    import dataclasses

    from signlock.search_spaces.files import load_spec as load

    spec = load(args.spec, parse_assignments(args.set) or None)
    workers = getattr(args, "workers_per_trial", None)
    if workers is None:
        return spec
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("--workers-per-trial", workers, "an integer >= 1")
    return dataclasses.replace(spec, workers_per_trial=workers)


def check_gpu_memory(args: argparse.Namespace, plan: SweepPlan) -> None:
    """``--gpu-memory SIZE``: refuse a sweep with a trial that would not fit that GPU."""
    if args.gpu_memory is None:
        return
    from signlock.search_spaces.memory import parse_memory_size
    from signlock.search_spaces.plan import check_gpu_memory as check

    check(plan, parse_memory_size(args.gpu_memory))


def exit_status(table: pd.DataFrame, n_planned: int) -> int:
    """0: every planned trial finished; 130: interrupted (resume to continue); 1: some errored
    or never ran."""
    if len(table) and not table["status"].isin(["TERMINATED", "ERROR"]).all():
        return 130
    n_finished = int((table["status"] == "TERMINATED").sum()) if len(table) else 0
    if n_finished < n_planned and not (len(table) and (table["status"] == "ERROR").any()):
        print(
            f"signlock: error: {n_planned - n_finished} of the {n_planned} planned trials did "
            "not run; `signlock resume` continues them",
            file=sys.stderr,
        )
    return 0 if n_finished >= n_planned else 1


def csv_list(text: str | None, cast: Any = str) -> list[Any]:
    return [cast(part) for part in (text or "").split(",") if part.strip()]


def at_least_one(value: int, flag: str) -> int:
    if value < 1:
        raise ConfigError(flag, value, "an integer >= 1")
    return value

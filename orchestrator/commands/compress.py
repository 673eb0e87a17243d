"""``signlock compress``: performance vs bits per weight of a sweep's trials (Fig. 20)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from signlock.orchestrator.commands.options import add_sweep_arg, csv_list
from signlock.trainables.errors import ConfigError

if TYPE_CHECKING:
    from signlock.analysis.compression import CompressionJob, Rows

ARTIFACT_PATH = "compression"  # on the sweep's parent run


def register(commands: argparse._SubParsersAction) -> None:
    compress = commands.add_parser(
        "compress", help="performance vs bits per weight of a sweep's trials (Fig. 20), into MLflow"
    )
    add_sweep_arg(compress)
    compress.add_argument("--methods", help="comma-separated (default: all seven)")
    compress.add_argument(
        "--bpw", help="comma-separated target bits per weight (default E.3.5's eight)"
    )
    compress.add_argument(
        "--targets", help="comma-separated matrix names (default: all but embeddings and head)"
    )
    compress.add_argument("--address", help="Ray cluster (default: a local Ray of this machine)")
    compress.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per trial task")
    compress.set_defaults(func=run)


def _budgets(text: str | None) -> tuple[float, ...]:
    from signlock.analysis.bit_accounting import DEFAULT_BUDGETS

    try:
        return tuple(csv_list(text, float)) or DEFAULT_BUDGETS
    except ValueError as error:
        raise ConfigError(
            "--bpw", text, "comma-separated bits per weight, e.g. 0.25,0.5"
        ) from error


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from signlock.analysis.compression import (
        budgets_reached,
        compress_sweep,
        compress_trial,
        validate_budgets,
        validate_methods,
    )
    from signlock.analysis.compressors import METHODS
    from signlock.analysis.sweep_data import load_sweep
    from signlock.orchestrator.ray_tune import run_tasks
    from signlock.orchestrator.tracking import log_outputs, open_existing_store

    methods = validate_methods(csv_list(args.methods) or METHODS)
    budgets = validate_budgets(_budgets(args.bpw))
    sweep = load_sweep(args.sweep, args.storage)

    def execute(jobs: list[CompressionJob], log_path: Path) -> Iterator[Rows]:
        """Each trial's job as one Ray task, a bar counting the finished ones."""
        with tqdm(total=len(jobs), desc="compress", unit="trial", leave=False) as bar:
            for rows in run_tasks(
                compress_trial, jobs, address=args.address, log_path=log_path,
                cpus_per_task=args.cpus_per_task,
            ):  # fmt: skip
                bar.update(1)
                yield rows

    outputs = compress_sweep(sweep, methods, budgets, tuple(csv_list(args.targets)), execute)
    context = sweep.record.context
    client = open_existing_store(context.tracking_uri)
    log_outputs(client, context.parent_run_id, outputs, ARTIFACT_PATH)
    for path in outputs.files:
        print(path)
    print(budgets_reached(outputs), file=sys.stderr)
    return 0

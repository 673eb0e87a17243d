"""``signlock query``: search trial runs in MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from signlock.orchestrator.commands.options import add_tracking_args, tracking_uri


def register(commands: argparse._SubParsersAction) -> None:
    query = commands.add_parser("query", help="search trial runs in MLflow")
    add_tracking_args(query)
    query.add_argument("--filter", help='e.g. "params.a_init > 0.01 and metrics.val_ppl < 5"')
    query.add_argument("--mlflow-filter", help="an MLflow filter string, applied server-side")
    query.add_argument("--sweep", help="only runs of this sweep")
    query.add_argument("--format", default="table", help="table, csv, json or parquet")
    query.add_argument("--output", help="write to this file instead of stdout")
    query.add_argument("--all-columns", action="store_true")
    query.add_argument("--include-sweeps", action="store_true", help="also the parent runs")
    query.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from signlock.orchestrator.query import check_format, search_runs, write_runs

    output = Path(args.output) if args.output else None
    check_format(args.format, output)  # before any store is opened
    runs = search_runs(
        tracking_uri(args),
        args.experiment,
        filter_text=args.filter,
        mlflow_filter=args.mlflow_filter,
        include_sweeps=args.include_sweeps,
        sweep=args.sweep,
    )
    print(write_runs(runs, args.format, output, args.all_columns))
    return 0

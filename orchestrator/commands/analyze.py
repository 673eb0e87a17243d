"""``signlock analyze``: lock-in statistics, Pareto fronts and figures of a sweep, into MLflow."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from signlock.orchestrator.commands.options import add_sweep_arg

if TYPE_CHECKING:
    from signlock.analysis.outputs import Outputs

ARTIFACT_PATH = "analysis"  # on the sweep's parent run


def register(commands: argparse._SubParsersAction) -> None:
    analyze = commands.add_parser(
        "analyze", help="lock-in statistics, Pareto fronts and figures of a sweep, into MLflow"
    )
    add_sweep_arg(analyze)
    analyze.add_argument("--what", default="all", help="lockin, pareto or all (default)")
    analyze.add_argument("--x", default="flip_mean", help="Pareto x metric (default flip_mean)")
    analyze.add_argument("--y", help="Pareto y metric (default: the validation metric)")
    analyze.add_argument("--confidence", type=float, default=0.95, help="bootstrap level")
    analyze.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    analyze.add_argument(
        "--per-tensor-ci",
        action="store_true",
        help="bootstrap intervals per tensor too (default: pooled only; costs tensors × more)",
    )
    analyze.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from signlock.analysis.analyze import AnalysisRequest, check_request, run_analysis
    from signlock.analysis.sweep_data import load_sweep
    from signlock.orchestrator.tracking import log_outputs, open_existing_store

    sweep = load_sweep(args.sweep, args.storage)
    flags = {
        "what": args.what,
        "x": args.x,
        "y": args.y,
        "confidence": args.confidence,
        "resamples": args.resamples,
        "per_tensor_ci": args.per_tensor_ci,
    }
    check_request(sweep, AnalysisRequest(**flags))  # every flag, before anything is touched
    context = sweep.record.context
    client = open_existing_store(context.tracking_uri)
    if sweep.n_missing:
        print(
            f"{sweep.n_missing} of {sweep.n_planned} trials have not finished; analysing the "
            f"{len(sweep.trials)} that have",
            file=sys.stderr,
        )

    def publish(staged: Outputs) -> None:  # before the new files replace the old ones
        log_outputs(client, context.parent_run_id, staged, ARTIFACT_PATH)

    outputs = run_analysis(sweep, **flags, publish=publish)
    for path in outputs.files:
        print(path)
    for key, value in outputs.metrics.items():
        print(f"{key} = {value:.6g}", file=sys.stderr)
    return 0

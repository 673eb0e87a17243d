"""``signlock report``: one self-contained HTML page of a sweep, logged on its parent run."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from signlock.orchestrator.commands.options import add_sweep_arg

if TYPE_CHECKING:
    from signlock.analysis.outputs import Outputs

ARTIFACT_PATH = "analysis"  # on the sweep's parent run, beside the analysis


def register(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report", help="one self-contained HTML page of a sweep (spec, trials, tables, figures)"
    )
    add_sweep_arg(report)
    report.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from signlock.analysis.report import write_report
    from signlock.analysis.sweep_data import load_sweep
    from signlock.orchestrator.tracking import log_outputs, open_existing_store, trial_run_links

    sweep = load_sweep(args.sweep, args.storage)
    context = sweep.record.context
    client = open_existing_store(context.tracking_uri)
    links = trial_run_links(
        client, context.tracking_uri, context.experiment_id, context.parent_run_id
    )

    def publish(staged: Outputs) -> None:  # an analysis made first, before it is swapped in
        log_outputs(client, context.parent_run_id, staged, ARTIFACT_PATH)

    outputs = write_report(sweep, links, publish=publish)
    log_outputs(client, context.parent_run_id, outputs, ARTIFACT_PATH)
    for path in outputs.files:
        print(path)
    return 0

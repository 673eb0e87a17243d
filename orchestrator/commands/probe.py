"""``signlock probe``: one-bit-wall probes of sign matrices, into an MLflow run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from signlock.orchestrator.commands.options import (
    DEFAULT_RUNS_DIR,
    DEFAULT_SWEEPS_DIR,
    at_least_one,
    tracking_uri,
)

ARTIFACT_PATH = "probe"  # on the probe's own run


def register(commands: argparse._SubParsersAction) -> None:
    probe = commands.add_parser(
        "probe", help="one-bit-wall probes of sign matrices (SVD error, KS, entropy, codecs)"
    )
    probe.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="run directory, sweep (name or directory), state_dict file, safetensors file or "
        "directory of safetensors shards",
    )
    probe.add_argument("--out", help="output directory (default signlock-runs/probes/<name>)")
    probe.add_argument("--name", help="name of the probe and its MLflow run")
    probe.add_argument("--storage", default=str(DEFAULT_SWEEPS_DIR))
    probe.add_argument(
        "--exclude", default="emb,lm_head", help="comma-separated name parts to leave out"
    )
    probe.add_argument("--top-svd", type=int, default=40, help="largest matrices for E_r")
    probe.add_argument("--top-ks", type=int, default=6, help="largest matrices for the KS test")
    probe.add_argument("--top-entropy", type=int, default=6, help="largest matrices for Ĥ_RD")
    probe.add_argument(
        "--max-patches", type=int, default=1 << 20, help="3×3 patches per matrix (then sampled)"
    )
    probe.add_argument(
        "--no-references", action="store_true", help="skip Table 2's three reference rows"
    )
    probe.add_argument("--tracking-uri", help="MLflow tracking URI (default: embedded sqlite)")
    probe.add_argument("--experiment", default="signlock-probes", help="MLflow experiment")
    probe.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from signlock.analysis.probe_run import ProbeOptions, probe_paths, probed_sweep
    from signlock.orchestrator.tracking import (
        MlflowClient,
        create_probe_run,
        finish_run,
        log_outputs,
    )

    options = ProbeOptions(
        excluded=tuple(word for word in args.exclude.split(",") if word),
        top_svd=at_least_one(args.top_svd, "--top-svd"),
        top_ks=at_least_one(args.top_ks, "--top-ks"),
        top_entropy=at_least_one(args.top_entropy, "--top-entropy"),
        max_patches=at_least_one(args.max_patches, "--max-patches"),
        references=not args.no_references,
    )
    storage = Path(args.storage)
    name = args.name or Path(args.paths[0]).name or "probe"
    out = Path(args.out) if args.out else DEFAULT_RUNS_DIR / "probes" / name
    outputs = probe_paths(args.paths, storage, out, options)
    # A probe of one sweep nests under its parent run, in its store; anything else goes to
    # --experiment in --tracking-uri (default: the embedded store).
    sweep = probed_sweep(args.paths, storage)
    if sweep is not None:
        context = sweep.record.context
        parent, store = (context.experiment_id, context.parent_run_id), context.tracking_uri
    else:
        parent, store = None, tracking_uri(args)
    params = {
        "paths": " ".join(args.paths)[:500],
        "excluded": ",".join(options.excluded),
        "top_svd": str(options.top_svd),
        "top_ks": str(options.top_ks),
        "top_entropy": str(options.top_entropy),
    }
    client = MlflowClient(store)
    run_id = create_probe_run(
        client, store, name, params,
        experiment=args.experiment, parent=parent, storage=storage.resolve(),
    )  # fmt: skip
    log_outputs(client, run_id, outputs, ARTIFACT_PATH)
    finish_run(client, run_id)
    for path in outputs.files:
        print(path)
    print(f"MLflow run {run_id} ({store})", file=sys.stderr)
    return 0

"""The ``signlock`` command line.

User errors (``UsageError``: a bad value, a missing file) print one line, ``signlock: error: …``,
and exit with status 2 before any work starts; other signlock errors (a diverged run, a failed
download) print one line and exit with 1; anything else keeps its traceback. Ray, MLflow and
Optuna are imported only by the commands that use them, so ``train``/``plan`` start fast and bad
input fails before any of them starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from signlock.search_spaces.overrides import parse_assignments
from signlock.search_spaces.presets import TRIAL_PRESETS, trial_preset
from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError, InputNotFoundError, SignlockError, UsageError
from signlock.trainables.files import is_disk_full

DEFAULT_RUNS_DIR = Path("signlock-runs")
DEFAULT_SWEEPS_DIR = DEFAULT_RUNS_DIR / "sweeps"


def load_trial_config(args: argparse.Namespace) -> TrialConfig:
    if (args.config is None) == (args.preset is None):
        raise ConfigError("--config/--preset", None, "exactly one of --config FILE, --preset NAME")
    overrides = parse_assignments(args.set)
    if args.preset is not None:
        cfg = trial_preset(args.preset)
    elif not Path(args.config).is_file():
        raise InputNotFoundError(args.config)
    else:
        cfg = TrialConfig.from_file(args.config)
    if args.steps is not None:
        overrides["steps"] = args.steps
    return cfg.with_overrides(overrides) if overrides else cfg


def cmd_train(args: argparse.Namespace) -> int:
    from signlock.trainables.trainer import Trial

    cfg = load_trial_config(args)
    run_dir = Path(args.run_dir) if args.run_dir else DEFAULT_RUNS_DIR / cfg.name
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("--run-dir", str(run_dir), "a directory (this is a file)")
    trial = Trial(cfg, run_dir, progress=not args.quiet)
    restored = None if args.no_resume else trial.restore()
    if restored is not None:
        for skipped in restored.skipped:
            print(f"{skipped}; using {restored.path.name}", file=sys.stderr)
        print(f"resuming {run_dir} from step {restored.step}", file=sys.stderr)
    summary = trial.run(resume=False)
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"run directory: {run_dir}", file=sys.stderr)
    return 0


def preset_summary(factory: Any) -> str:
    """The first sentence of a preset's docstring on one line (a closing colon becomes a stop)."""
    text = " ".join((factory.__doc__ or "").split()).replace("``", "")
    end = re.search(r"[.:](\s|$)", text)
    return text[: end.start()] + "." if end else text


def cmd_presets(args: argparse.Namespace) -> int:
    from signlock.search_spaces.sweeps import SWEEP_PRESETS

    for title, presets in (
        ("trial presets (signlock train --preset NAME):", TRIAL_PRESETS),
        ("sweep presets (signlock sweep NAME):", SWEEP_PRESETS),
    ):
        print(title)
        for name, factory in presets.items():
            print(f"  {name:26s} {preset_summary(factory)}")
    return 0


def _tracking_uri(args: argparse.Namespace) -> str:
    from signlock.orchestrator.tracking import absolute_tracking_uri, default_tracking_uri

    if getattr(args, "tracking_uri", None):
        return absolute_tracking_uri(args.tracking_uri)
    return default_tracking_uri(DEFAULT_RUNS_DIR)


def _sweep_options(args: argparse.Namespace, **extra: Any) -> Any:
    from signlock.orchestrator.sweep import DEFAULT_EXPERIMENT, SweepOptions, storage_path

    return SweepOptions(
        storage=storage_path(args.storage),
        tracking_uri=_tracking_uri(args),
        experiment=getattr(args, "experiment", DEFAULT_EXPERIMENT),
        address=args.address,
        progress=not args.quiet,
        verbose=args.verbose,
        connect_timeout=args.connect_timeout,
        **extra,
    )


def _load_spec(args: argparse.Namespace) -> Any:
    from signlock.search_spaces.files import load_spec

    return load_spec(args.spec, parse_assignments(args.set) or None)


def cmd_plan(args: argparse.Namespace) -> int:
    from signlock.search_spaces.plan import format_plan, plan_sweep

    plan = plan_sweep(_load_spec(args))
    print(format_plan(plan))
    _check_gpu_memory(args, plan)
    return 0


def _check_gpu_memory(args: argparse.Namespace, plan: Any) -> None:
    """``--gpu-memory SIZE``: refuse a sweep with a trial that would not fit that GPU."""
    if args.gpu_memory is None:
        return
    from signlock.search_spaces.memory import parse_memory_size
    from signlock.search_spaces.plan import check_gpu_memory

    check_gpu_memory(plan, parse_memory_size(args.gpu_memory))


def _exit_status(table: Any, n_planned: int) -> int:
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


def _planned(sweep_dir: Path) -> int:
    from signlock.orchestrator.record import SweepRecord

    return SweepRecord.read(sweep_dir).n_trials


def cmd_sweep(args: argparse.Namespace) -> int:
    from signlock.orchestrator.sweep import launch_sweep, print_results, with_search
    from signlock.orchestrator.trial_runner import FaultInjection

    spec = _load_spec(args)
    if args.search is not None or args.budget is not None:
        spec = with_search(spec, args.search or spec.search, args.budget)
    if args.gpu_memory is not None:
        from signlock.search_spaces.plan import plan_sweep

        _check_gpu_memory(args, plan_sweep(spec))
    options = _sweep_options(
        args,
        max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_failures=args.max_failures,
        checkpoint_every=args.checkpoint_every,
        faults=tuple(FaultInjection.parse(text) for text in args.inject_fault),
    )
    if args.backend == "slurm":
        from signlock.orchestrator.submit import submit_sweep

        request = _slurm_request(args)
        sweep_dir, job_id = submit_sweep(spec, options, request, name=args.name)
        return _after_submission(args, sweep_dir, job_id)
    _refuse_slurm_flags(args)
    table = launch_sweep(spec, options, name=args.name)
    sweep_dir = options.storage / (args.name or spec.name)
    print_results(table, sweep_dir)
    return _exit_status(table, _planned(sweep_dir))


SLURM_FLAGS = (
    "partition", "time", "nodes", "gpus_per_node", "cpus_per_node", "mem", "account", "qos",
    "constraint", "slurm_setup", "max_requeues", "slurm_mode", "array_parallelism",
)  # fmt: skip


def _given_slurm_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The --backend slurm flags given on the command line, as SlurmRequest fields."""
    given = {
        name: getattr(args, name) for name in SLURM_FLAGS if getattr(args, name) not in (None, [])
    }
    renamed = {"slurm_setup": "setup", "slurm_mode": "mode"}
    request = {renamed.get(name, name): value for name, value in given.items()}
    if "setup" in request:
        request["setup"] = tuple(request["setup"])
    return request


def _refuse_slurm_flags(args: argparse.Namespace) -> None:
    given = _given_slurm_flags(args)
    if given or args.wait:
        name = next(iter(given), "wait")
        flag = "--" + {"setup": "slurm-setup", "mode": "slurm-mode"}.get(name, name).replace(
            "_", "-"
        )
        raise ConfigError(flag, given.get(name, True), "only with --backend slurm")


def _slurm_request(args: argparse.Namespace) -> Any:
    from signlock.cluster.slurm_request import SlurmRequest

    given = _given_slurm_flags(args)
    for required in ("partition", "time"):
        if required not in given:
            raise ConfigError(f"--{required}", None, "a value with --backend slurm")
    return SlurmRequest(**given)


def _after_submission(args: argparse.Namespace, sweep_dir: Path, job_id: str) -> int:
    from signlock.orchestrator.submit import wait_for_job

    print(f"submitted SLURM job {job_id} for sweep {sweep_dir.name} ({sweep_dir})")
    if not args.wait:
        print(
            f"follow it with `signlock status {sweep_dir.name}` or "
            f"`signlock logs {sweep_dir.name} --follow`",
            file=sys.stderr,
        )
        return 0
    from signlock.orchestrator.sweep import print_results

    table = wait_for_job(sweep_dir)
    print_results(table, sweep_dir)
    return _exit_status(table, _planned(sweep_dir))


def cmd_resume(args: argparse.Namespace) -> int:
    from signlock.orchestrator.sweep import print_results, resume_sweep, sweep_dir_for

    options = _sweep_options(args)
    sweep_dir = sweep_dir_for(args.sweep, options.storage)
    if args.backend == "slurm":
        from signlock.orchestrator.ray_tune import Restore
        from signlock.orchestrator.submit import resubmit_sweep

        restore = Restore(
            resume_errored=not args.skip_errored, restart_errored=args.restart_errored
        )
        _, job_id = resubmit_sweep(args.sweep, options, _given_slurm_flags(args), restore=restore)
        return _after_submission(args, sweep_dir, job_id)
    _refuse_slurm_flags(args)
    table = resume_sweep(
        args.sweep,
        options,
        restart_errored=args.restart_errored,
        resume_errored=not args.skip_errored,
    )
    print_results(table, sweep_dir)
    return _exit_status(table, _planned(sweep_dir))


def cmd_status(args: argparse.Namespace) -> int:
    from signlock.orchestrator.status import format_status, sweep_status
    from signlock.orchestrator.submit import job_line
    from signlock.orchestrator.sweep import storage_path, sweep_dir_for

    sweep_dir = sweep_dir_for(args.sweep, storage_path(args.storage))
    slurm_job = job_line(sweep_dir)
    if slurm_job is not None:
        print(slurm_job)
    print(format_status(sweep_status(sweep_dir)))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from signlock.analysis.analyze import AnalysisRequest, check_request, run_analysis
    from signlock.analysis.sweep_data import load_sweep
    from signlock.orchestrator.tracking import log_analysis, open_existing_store

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

    def publish(directory: Path, metrics: Any) -> None:
        log_analysis(client, context.parent_run_id, directory, metrics)

    result = run_analysis(sweep, **flags, publish=publish)
    for path in result.files:
        print(path)
    for key, value in result.metrics.items():
        print(f"{key} = {value:.6g}", file=sys.stderr)
    return 0


def _csv_list(text: str | None, cast: Any = str) -> list[Any]:
    return [cast(part) for part in (text or "").split(",") if part.strip()]


def _budgets(text: str | None) -> tuple[float, ...]:
    from signlock.analysis.bit_accounting import DEFAULT_BUDGETS

    try:
        return tuple(_csv_list(text, float)) or DEFAULT_BUDGETS
    except ValueError as error:
        raise ConfigError(
            "--bpw", text, "comma-separated bits per weight, e.g. 0.25,0.5"
        ) from error


def cmd_compress(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from signlock.analysis.compression import (
        compress_trial,
        plan_jobs,
        read_table,
        run_compression,
        save_figure,
        validate_budgets,
        validate_methods,
        validate_targets,
    )
    from signlock.analysis.compressors import METHODS
    from signlock.analysis.sweep_data import load_sweep
    from signlock.orchestrator.ray_tune import run_tasks
    from signlock.orchestrator.tracking import log_artifacts_on_run, open_existing_store

    methods = validate_methods(_csv_list(args.methods) or METHODS)
    budgets = validate_budgets(_budgets(args.bpw))
    sweep = load_sweep(args.sweep, args.storage)
    runs = sweep.directory / "runs"
    trials = {
        name: runs / name
        for name in sweep.trials["name"]
        if (runs / name / "checkpoints" / "latest.pt").is_file()
    }
    if not trials:
        raise ConfigError("SWEEP", args.sweep, "a sweep with finished trials and checkpoints")
    targets = validate_targets(trials.values(), tuple(_csv_list(args.targets)))
    out = sweep.directory / "compression"
    out.mkdir(exist_ok=True)
    table_path = out / "compression.parquet"
    jobs = plan_jobs(trials, read_table(table_path), methods, budgets, targets)
    bar = tqdm(total=len(jobs), desc="compress", unit="trial", leave=False)

    def execute(pending):
        for rows in run_tasks(
            compress_trial, pending, address=args.address, log_path=out / "ray.log",
            cpus_per_task=args.cpus_per_task,
        ):  # fmt: skip
            bar.update(1)
            yield rows

    try:
        table = run_compression(jobs, table_path, execute)
    finally:
        bar.close()
    points = {
        row["name"]: ", ".join(f"{c.removeprefix('config.')}={row[c]}" for c in sweep.group_columns)
        for _, row in sweep.trials.iterrows()
    }
    figure = save_figure(table, points, out / "compression.png")
    context = sweep.record.context
    client = open_existing_store(context.tracking_uri)
    files = [table_path] + ([figure] if figure else [])
    log_artifacts_on_run(client, context.parent_run_id, files, "compression")
    for path in files:
        print(path)
    reached = table[table.status == "ok"]
    print(f"{len(reached)} of {len(table)} rows reached their budget", file=sys.stderr)
    return 0


def _at_least_one(value: int, flag: str) -> int:
    if value < 1:
        raise ConfigError(flag, value, "an integer >= 1")
    return value


def cmd_probe(args: argparse.Namespace) -> int:
    from signlock.analysis.probe_run import ProbeOptions, resolve_sources, run_probe
    from signlock.orchestrator.tracking import log_probe

    options = ProbeOptions(
        excluded=tuple(word for word in args.exclude.split(",") if word),
        top_svd=_at_least_one(args.top_svd, "--top-svd"),
        top_ks=_at_least_one(args.top_ks, "--top-ks"),
        top_entropy=_at_least_one(args.top_entropy, "--top-entropy"),
        max_patches=_at_least_one(args.max_patches, "--max-patches"),
        references=not args.no_references,
    )
    storage = Path(args.storage)
    sources = [source for path in args.paths for source in resolve_sources(path, storage)]
    if not sources:
        raise ConfigError("PATH", " ".join(args.paths), "weights to probe (no finished trial)")
    name = args.name or Path(args.paths[0]).name or "probe"
    out = Path(args.out) if args.out else DEFAULT_RUNS_DIR / "probes" / name
    result = run_probe(sources, out, options)
    parent, tracking_uri = _probe_parent(args, storage)
    params = {
        "paths": " ".join(args.paths)[:500],
        "excluded": ",".join(options.excluded),
        "top_svd": str(options.top_svd),
        "top_ks": str(options.top_ks),
        "top_entropy": str(options.top_entropy),
    }
    run_id = log_probe(
        tracking_uri, name, out, params, result.metrics,
        experiment=args.experiment, parent=parent, storage=storage.resolve(),
    )  # fmt: skip
    for path in result.files:
        print(path)
    print(f"MLflow run {run_id} ({tracking_uri})", file=sys.stderr)
    return 0


def _probe_parent(args: argparse.Namespace, storage: Path) -> tuple[tuple[str, str] | None, str]:
    """A probe of one sweep nests under its parent run, in its store; anything else goes to
    ``--experiment`` in ``--tracking-uri`` (default: the embedded store)."""
    from signlock.analysis.sweep_data import load_sweep

    if len(args.paths) == 1 and not Path(args.paths[0]).is_file():
        with contextlib.suppress(SignlockError, FileNotFoundError):
            context = load_sweep(args.paths[0], storage).record.context
            return (context.experiment_id, context.parent_run_id), context.tracking_uri
    return None, _tracking_uri(args)


def cmd_report(args: argparse.Namespace) -> int:
    from signlock.analysis.analyze import OUTPUT_DIR, run_analysis
    from signlock.analysis.report import write_report
    from signlock.analysis.sweep_data import load_sweep
    from signlock.orchestrator.tracking import log_analysis, open_existing_store, trial_run_links

    sweep = load_sweep(args.sweep, args.storage)
    context = sweep.record.context
    client = open_existing_store(context.tracking_uri)
    analysis_dir = sweep.directory / OUTPUT_DIR
    if len(sweep.trials) and not (analysis_dir / "seeds.csv").exists():  # analyse first

        def publish(directory: Path, metrics: Any) -> None:
            log_analysis(client, context.parent_run_id, directory, metrics)

        run_analysis(sweep, publish=publish)
    links = trial_run_links(
        client, context.tracking_uri, context.experiment_id, context.parent_run_id
    )
    path = write_report(sweep, analysis_dir, links)
    client.log_artifact(context.parent_run_id, str(path), "analysis")
    print(path)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from signlock.orchestrator.submit import print_logs
    from signlock.orchestrator.sweep import storage_path, sweep_dir_for

    print_logs(sweep_dir_for(args.sweep, storage_path(args.storage)), follow=args.follow)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from signlock.orchestrator.submit import cancel_sweep
    from signlock.orchestrator.sweep import storage_path, sweep_dir_for

    sweep_dir = sweep_dir_for(args.sweep, storage_path(args.storage))
    job_id = cancel_sweep(sweep_dir)
    print(
        f"cancelled SLURM job {job_id}; continue with "
        f"`signlock resume {sweep_dir.name} --backend slurm`"
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from signlock.orchestrator.query import FORMATS, search_runs, write_runs

    if args.format not in FORMATS:
        raise ConfigError("--format", args.format, "one of " + ", ".join(FORMATS))
    if args.format == "parquet" and not args.output:
        raise ConfigError("--output", None, "a file path (parquet is binary)")
    runs = search_runs(
        _tracking_uri(args),
        args.experiment,
        filter_text=args.filter,
        mlflow_filter=args.mlflow_filter,
        include_sweeps=args.include_sweeps,
        sweep=args.sweep,
    )
    output = Path(args.output) if args.output else None
    print(write_runs(runs, args.format, output, args.all_columns))
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from signlock.orchestrator import tracking

    ui_only = args.command == "ui"
    backend_store_uri = args.backend_store_uri or _tracking_uri(args)
    command = tracking.mlflow_server_command(
        backend_store_uri=backend_store_uri,
        artifacts_destination=args.artifacts_destination
        or str((DEFAULT_RUNS_DIR / "mlartifacts").resolve()),
        host=args.host,
        port=args.port,
        ui_only=ui_only,
        workers=args.workers,
    )
    log_path = Path(args.log).resolve() if args.log else None
    return tracking.run_foreground(
        command,
        url=tracking.server_url(args.host, args.port),
        log_path=log_path or tracking.server_log_path(backend_store_uri, DEFAULT_RUNS_DIR),
        env=tracking.server_environment(ui_only=ui_only),
    )


def _add_tracking_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        help=f"MLflow tracking URI (default sqlite:///{DEFAULT_RUNS_DIR}/mlflow.db)",
    )
    parser.add_argument("--experiment", default="signlock", help="MLflow experiment name")


def _add_sweep_runtime_args(parser: argparse.ArgumentParser) -> None:
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
    _add_slurm_args(parser)


def _add_slurm_args(parser: argparse.ArgumentParser) -> None:
    slurm = parser.add_argument_group("SLURM (--backend slurm: one job, a Ray cluster inside)")
    slurm.add_argument("--backend", choices=["local", "slurm"], default="local")
    slurm.add_argument("--partition", help="SLURM partition (required with --backend slurm)")
    slurm.add_argument("--time", help="job time limit, HH:MM:SS (required with --backend slurm)")
    slurm.add_argument("--nodes", type=int, help="nodes of the allocation (default 1)")
    slurm.add_argument("--gpus-per-node", type=int)
    slurm.add_argument("--cpus-per-node", type=int)
    slurm.add_argument("--mem", help="memory per node, e.g. 64G")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--constraint")
    slurm.add_argument(
        "--slurm-setup", action="append", default=[], metavar="CMD",
        help="a shell line run before the job (e.g. 'module load cuda'); repeatable",
    )  # fmt: skip
    slurm.add_argument(
        "--max-requeues", type=int, help="requeues after time limits or preemption (default 3)"
    )
    slurm.add_argument(
        "--slurm-mode",
        choices=["ray", "array"],
        help="ray: one job running a Ray cluster (default); array: one array task per trial",
    )
    slurm.add_argument("--array-parallelism", type=int, help="array tasks running at once")
    slurm.add_argument("--wait", action="store_true", help="wait for the job and print the results")


def _add_gpu_memory_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpu-memory",
        metavar="SIZE",
        help="memory of the GPU each trial gets (e.g. 80GB): refuse trials predicted not to fit",
    )


def _add_sweep_commands(commands: Any) -> None:
    plan = commands.add_parser("plan", help="trial count, compute and resources of a sweep")
    plan.add_argument("spec", help="a sweep preset (see `signlock presets`) or a YAML spec")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    _add_gpu_memory_arg(plan)
    plan.set_defaults(func=cmd_plan)

    sweep = commands.add_parser("sweep", help="run a sweep on Ray Tune, logging to MLflow")
    sweep.add_argument("spec", help="a sweep preset or a YAML spec file")
    sweep.add_argument("--name", help="sweep name (default: the spec's name)")
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base trial field for every trial, e.g. --set steps=200",
    )
    sweep.add_argument("--max-concurrent", type=int, help="trials running at once")
    sweep.add_argument("--cpus-per-trial", type=float)
    sweep.add_argument("--gpus-per-trial", type=float)
    sweep.add_argument(
        "--max-failures", type=int, default=2, help="retries of a crashed trial (default 2)"
    )
    sweep.add_argument(
        "--checkpoint-every",
        type=int,
        help="steps between trial checkpoints (default: the trial's own, else ~10 per trial)",
    )
    _add_gpu_memory_arg(sweep)
    sweep.add_argument("--search", choices=["grid", "optuna"], help="override the spec's search")
    sweep.add_argument("--budget", type=int, help="number of Optuna trials")
    sweep.add_argument(
        "--inject-fault",
        action="append",
        default=[],
        metavar="NAME:STEP[:raise|nan]",
        help="make trial NAME crash (raise) or diverge (nan) once at STEP, to test recovery",
    )
    _add_tracking_args(sweep)
    _add_sweep_runtime_args(sweep)
    sweep.set_defaults(func=cmd_sweep)

    resume = commands.add_parser(
        "resume", help="continue an interrupted sweep (its MLflow store is the one it started with)"
    )
    resume.add_argument("sweep", help="sweep name (under --storage) or sweep directory")
    errored = resume.add_mutually_exclusive_group()
    errored.add_argument(
        "--restart-errored", action="store_true", help="rerun errored trials from scratch"
    )
    errored.add_argument("--skip-errored", action="store_true", help="leave errored trials")
    _add_sweep_runtime_args(resume)
    resume.set_defaults(func=cmd_resume)

    status = commands.add_parser("status", help="trials by state and the best so far")
    status.add_argument("sweep", help="sweep name (under --storage) or sweep directory")
    status.add_argument("--storage", default=str(DEFAULT_SWEEPS_DIR))
    status.set_defaults(func=cmd_status)

    analyze = commands.add_parser(
        "analyze", help="lock-in statistics, Pareto fronts and figures of a sweep, into MLflow"
    )
    analyze.add_argument("sweep", help="sweep name (under --storage) or sweep directory")
    analyze.add_argument("--storage", default=str(DEFAULT_SWEEPS_DIR))
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
    analyze.set_defaults(func=cmd_analyze)

    compress = commands.add_parser(
        "compress", help="performance vs bits per weight of a sweep's trials (Fig. 20), into MLflow"
    )
    compress.add_argument("sweep", help="sweep name (under --storage) or sweep directory")
    compress.add_argument("--storage", default=str(DEFAULT_SWEEPS_DIR))
    compress.add_argument("--methods", help="comma-separated (default: all seven)")
    compress.add_argument(
        "--bpw", help="comma-separated target bits per weight (default E.3.5's eight)"
    )
    compress.add_argument(
        "--targets", help="comma-separated matrix names (default: all but embeddings and head)"
    )
    compress.add_argument("--address", help="Ray cluster (default: a local Ray of this machine)")
    compress.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per trial task")
    compress.set_defaults(func=cmd_compress)

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
    probe.set_defaults(func=cmd_probe)

    report = commands.add_parser(
        "report", help="one self-contained HTML page of a sweep (spec, trials, tables, figures)"
    )
    report.add_argument("sweep", help="sweep name (under --storage) or sweep directory")
    report.add_argument("--storage", default=str(DEFAULT_SWEEPS_DIR))
    report.set_defaults(func=cmd_report)

    logs = commands.add_parser("logs", help="a SLURM sweep's job output (stdout and stderr)")
    logs.add_argument("sweep", help="sweep name (under --storage) or sweep directory")
    logs.add_argument("--storage", default=str(DEFAULT_SWEEPS_DIR))
    logs.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    logs.set_defaults(func=cmd_logs)

    cancel = commands.add_parser("cancel", help="scancel a SLURM sweep's job (resumable)")
    cancel.add_argument("sweep", help="sweep name (under --storage) or sweep directory")
    cancel.add_argument("--storage", default=str(DEFAULT_SWEEPS_DIR))
    cancel.set_defaults(func=cmd_cancel)

    query = commands.add_parser("query", help="search trial runs in MLflow")
    _add_tracking_args(query)
    query.add_argument("--filter", help='e.g. "params.a_init > 0.01 and metrics.val_ppl < 5"')
    query.add_argument("--mlflow-filter", help="an MLflow filter string, applied server-side")
    query.add_argument("--sweep", help="only runs of this sweep")
    query.add_argument("--format", default="table", help="table, csv, json or parquet")
    query.add_argument("--output", help="write to this file instead of stdout")
    query.add_argument("--all-columns", action="store_true")
    query.add_argument("--include-sweeps", action="store_true", help="also the parent runs")
    query.set_defaults(func=cmd_query)

    for name, text in (
        ("ui", "the MLflow UI on 127.0.0.1"),
        ("server", "an MLflow tracking server (sqlite or PostgreSQL backend) on 127.0.0.1"),
    ):
        server = commands.add_parser(name, help=text)
        server.add_argument("--tracking-uri", help=argparse.SUPPRESS)
        server.add_argument(
            "--backend-store-uri", help="sqlite:///PATH or postgresql://USER@HOST/DB"
        )
        server.add_argument("--artifacts-destination", help="artifact root directory or URI")
        server.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
        server.add_argument("--port", type=int, default=5000)
        server.add_argument(
            "--workers", type=int, help="uvicorn worker processes (default: 1 for ui, 4 for server)"
        )
        server.add_argument(
            "--log", help="MLflow's own output (default: mlflow-server.log beside a sqlite store)"
        )
        server.set_defaults(func=cmd_server)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signlock", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run one trial in-process (no Ray, no MLflow)")
    train.add_argument("--config", help="trial config file (.json or .yaml)")
    train.add_argument("--preset", help="a trial preset name (see `signlock presets`)")
    train.add_argument("--run-dir", help=f"output directory (default {DEFAULT_RUNS_DIR}/NAME)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=1e-3 (repeatable)",
    )
    train.add_argument("--steps", type=int, help="shorthand for --set steps=N")
    train.add_argument(
        "--no-resume",
        action="store_true",
        help="ignore an existing checkpoint in the run directory",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    presets = commands.add_parser("presets", help="list trial and sweep presets")
    presets.set_defaults(func=cmd_presets)
    _add_sweep_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"signlock: error: {error}", file=sys.stderr)
        return 2
    except SignlockError as error:
        print(f"signlock: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `signlock presets | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:  # a full disk reached through a library: one line, not a traceback
        if not is_disk_full(error):
            raise
        where = getattr(error, "filename", None) or "the MLflow store or the sweep directory"
        print(f"signlock: error: no space left on device writing {where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

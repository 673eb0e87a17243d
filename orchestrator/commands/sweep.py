"""``signlock sweep``: run a sweep on the chosen backend, logging to MLflow."""

from __future__ import annotations

import argparse

from signlock.orchestrator.commands.options import (
    add_gpu_memory_arg,
    add_set_arg,
    add_tracking_args,
    add_workers_arg,
    check_gpu_memory,
    load_spec,
    sweep_options,
)
from signlock.orchestrator.commands.runtime import add_sweep_runtime_args, finish, selected_backend
from signlock.trainables.errors import ConfigError


def register(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser("sweep", help="run a sweep on Ray Tune, logging to MLflow")
    sweep.add_argument("spec", help="a sweep preset or a YAML spec file")
    sweep.add_argument("--name", help="sweep name (default: the spec's name)")
    add_set_arg(sweep, "override a base trial field for every trial, e.g. --set steps=200")
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
    add_gpu_memory_arg(sweep)
    add_workers_arg(sweep)
    sweep.add_argument("--search", choices=["grid", "optuna"], help="override the spec's search")
    sweep.add_argument("--budget", type=int, help="number of Optuna trials")
    sweep.add_argument(
        "--inject-fault",
        action="append",
        default=[],
        metavar="NAME:STEP[:raise|nan|hang]",
        help="make trial NAME crash (raise), diverge (nan) or hang once at STEP, to test recovery",
    )
    add_tracking_args(sweep)
    add_sweep_runtime_args(sweep)
    sweep.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from signlock.orchestrator.sweep import with_search
    from signlock.trainables.records import FaultInjection

    spec = load_spec(args)
    if spec.workers_per_trial > 1:
        raise ConfigError(
            "spec.resources.workers_per_trial",
            spec.workers_per_trial,
            "1 in sweeps for now (Ray Train sweeps of sharded trials are not built yet; "
            f"one sharded trial runs with `signlock train --workers-per-trial "
            f"{spec.workers_per_trial}`)",
        )
    if args.search is not None or args.budget is not None:
        spec = with_search(spec, args.search or spec.search, args.budget)
    if args.gpu_memory is not None:
        from signlock.search_spaces.plan import plan_sweep

        check_gpu_memory(args, plan_sweep(spec))
    options = sweep_options(
        args,
        max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_failures=args.max_failures,
        checkpoint_every=args.checkpoint_every,
        faults=tuple(FaultInjection.parse(text) for text in args.inject_fault),
    )
    backend = selected_backend(args)
    request = None
    if backend.request_type is not None:
        from signlock.orchestrator.commands.flags import request_from_args

        request = request_from_args(args, backend.request_type, args.backend)
    return finish(args, backend.submit(spec, options, request, name=args.name))

"""``signlock plan``: trial count, compute and resources of a sweep, before running it."""

from __future__ import annotations

import argparse

from signlock.orchestrator.commands.options import (
    add_gpu_memory_arg,
    add_set_arg,
    add_workers_arg,
    check_gpu_memory,
    load_spec,
)


def register(commands: argparse._SubParsersAction) -> None:
    plan = commands.add_parser("plan", help="trial count, compute and resources of a sweep")
    plan.add_argument("spec", help="a sweep preset (see `signlock presets`) or a YAML spec")
    add_set_arg(plan)
    add_gpu_memory_arg(plan)
    add_workers_arg(plan)
    plan.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from signlock.search_spaces.plan import format_plan, plan_sweep

    plan = plan_sweep(load_spec(args))
    print(format_plan(plan))
    check_gpu_memory(args, plan)
    return 0

"""One module per ``signlock`` command, each with ``register(subparsers)`` and ``run(args)``;
:data:`COMMANDS` is their order in ``signlock --help``. Ray, MLflow and Optuna are imported by
``run``, never at import, so ``train``/``plan`` start fast and bad input fails before any of
them starts."""

from __future__ import annotations

from signlock.orchestrator.commands import (
    analyze,
    cancel,
    compress,
    logs,
    plan,
    presets,
    probe,
    query,
    report,
    resume,
    server,
    status,
    sweep,
    train,
)

COMMANDS = (
    train, presets, plan, sweep, resume, status, analyze, compress, probe, report, logs, cancel,
    query, server,
)  # fmt: skip

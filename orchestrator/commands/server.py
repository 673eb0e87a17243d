"""``signlock server`` and ``signlock ui``: an MLflow tracking server or UI on 127.0.0.1 that
never outlives signlock's process."""

from __future__ import annotations

import argparse
from pathlib import Path

from signlock.orchestrator.commands.options import DEFAULT_RUNS_DIR, tracking_uri

COMMANDS = (
    ("ui", "the MLflow UI on 127.0.0.1"),
    ("server", "an MLflow tracking server (sqlite or PostgreSQL backend) on 127.0.0.1"),
)


def register(commands: argparse._SubParsersAction) -> None:
    for name, text in COMMANDS:
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
        server.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from signlock.orchestrator import tracking

    ui_only = args.command == "ui"
    backend_store_uri = args.backend_store_uri or tracking_uri(args)
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

"""Sweep fixtures for the SLURM tests (the real CLI in a temporary directory, tiny specs, MLflow
stores); the SLURM itself is the session fixture ``local_slurm`` of tests/conftest.py."""

from __future__ import annotations

from tests.orchestrator.conftest import (  # noqa: F401
    cli,
    signlock_command,
    sweep_root,
    tiny_spec,
    tracking_uri,
    write_spec,
)

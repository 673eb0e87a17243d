"""A real single-node SLURM (cluster/local_slurm.sh) for the tests that submit jobs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_SLURM = REPO_ROOT / "cluster" / "local_slurm.sh"


@pytest.fixture(scope="session")
def local_slurm() -> Iterator[str]:
    """Starts SLURM (installing it from Debian's packages if missing) unless it already runs;
    stops it afterwards only if this fixture started it. Yields the partition name."""
    already_up = subprocess.run([LOCAL_SLURM, "status"], capture_output=True).returncode == 0
    up = subprocess.run([LOCAL_SLURM, "up"], capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, up.stderr
    yield "debug"
    if not already_up:
        subprocess.run([LOCAL_SLURM, "down"], capture_output=True, timeout=120)


# The sweep tests' fixtures: the real CLI in a temporary directory, tiny specs, MLflow stores.
from tests.orchestrator.conftest import (  # noqa: E402, F401
    cli,
    signlock_command,
    sweep_root,
    tiny_spec,
    tracking_uri,
    write_spec,
)

"""Shared test fixtures. Only tests may read ``../shared``; the package never does."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO_ROOT / "cluster" / "local_slurm.sh"
# A checkout beside the developers' shared folder, or a CI clone elsewhere on the same machine.
TINYSHAKESPEARE_CANDIDATES = (
    REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
    Path("/work/shared/data/tinyshakespeare.txt"),
)


@pytest.fixture(scope="session")
def tinyshakespeare_path() -> Path:
    """A local Tiny Shakespeare (``$SIGNLOCK_TINYSHAKESPEARE``, else ../shared/data/...)."""
    found = [p for p in TINYSHAKESPEARE_CANDIDATES if p.is_file()]
    default = found[0] if found else TINYSHAKESPEARE_CANDIDATES[0]
    path = Path(os.environ.get("SIGNLOCK_TINYSHAKESPEARE", default))
    if not path.is_file():
        pytest.skip(
            f"Tiny Shakespeare not found at {path}; set SIGNLOCK_TINYSHAKESPEARE to a "
            "local copy of karpathy/char-rnn's tinyshakespeare/input.txt"
        )
    return path


@pytest.fixture
def tiny_mnist_npz(tmp_path: Path) -> Path:
    """A small Keras-format ``mnist.npz``: 60 train / 12 test uint8 28x28 images.

    Training image ``i`` is filled with the value ``i`` and labelled ``i % 10``, so tests can tell
    which original image ended up where; test image ``j`` is filled with ``100 + j``.
    """
    n_train, n_test = 60, 12
    x_train = np.repeat(np.arange(n_train, dtype=np.uint8), 28 * 28).reshape(n_train, 28, 28)
    x_test = np.repeat(np.arange(100, 100 + n_test, dtype=np.uint8), 28 * 28)
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=x_train,
        y_train=(np.arange(n_train) % 10).astype(np.uint8),
        x_test=x_test.reshape(n_test, 28, 28),
        y_test=(np.arange(n_test) % 10).astype(np.uint8),
    )
    return path


@pytest.fixture
def seeded_cache(
    tinyshakespeare_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """``$SIGNLOCK_CACHE`` pointing at a fresh cache that already holds Tiny Shakespeare, as a user
    with an offline copy would set it up; ``fetch`` verifies it by checksum."""
    from signlock.trainables.downloads import DATASETS

    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / DATASETS["tinyshakespeare"].filename
    target.write_bytes(tinyshakespeare_path.read_bytes())
    monkeypatch.setenv("SIGNLOCK_CACHE", str(cache))
    return cache


@pytest.fixture
def cli_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> Callable[..., subprocess.CompletedProcess]:
    """``cli_in_process(*ARGS, cwd=tmp_path, env_extra=None)``: ``signlock ARGS`` by calling
    ``signlock.orchestrator.cli.main`` in this process, answered as the subprocess helpers answer
    (a ``CompletedProcess``: exit status, stdout, stderr captured at the file descriptors).

    Only for commands that are refused or only list or plan: no Ray, MLflow server, SLURM job,
    trial or sweep may start (a started Ray fails the test), and nothing about signals, pipes,
    tracebacks of real runs or process exit can be seen here: those keep a real subprocess. It
    saves the ~5 s a fresh interpreter spends importing torch, MLflow and Ray. Warnings are left
    to pytest (a subprocess would print them on stderr)."""

    def run(
        *args: str, cwd: Path | None = None, env_extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        from signlock.orchestrator.cli import main

        for key, value in (env_extra or {}).items():
            monkeypatch.setenv(key, value)
        where = Path(cwd or tmp_path)
        monkeypatch.chdir(where)
        environ = dict(os.environ)
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        root_logger = logging.getLogger()
        logging_state = (list(root_logger.handlers), root_logger.level)
        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else None
        ray_was_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
        capfd.readouterr()  # what the test printed before is not the command's output
        try:
            returncode = main(list(args))
        except SystemExit as stop:  # argparse: --help, usage errors
            if stop.code is None or isinstance(stop.code, int):
                returncode = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
                returncode = 1
        except Exception:  # as a crashing interpreter would: the traceback and exit 1
            traceback.print_exc()
            returncode = 1
        out, err = capfd.readouterr()
        # Leave this process as it was for the next test.
        os.chdir(where)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update({k: v for k, v in environ.items() if os.environ.get(k) != v})
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
        root_logger.handlers[:] = logging_state[0]
        root_logger.setLevel(logging_state[1])
        if torch is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized() and not ray_was_up:
            ray.shutdown()
            pytest.fail(f"signlock {' '.join(args)} started Ray in-process: use a subprocess")
        return subprocess.CompletedProcess(["signlock", *args], returncode, out, err)

    return run


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


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 40 MiB tmpfs to fill up (mounting needs root, as CI and these machines run)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(directory: Path) -> Path:
    """Write zeros into ``directory`` until its filesystem has not one byte left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle:
        for chunk in (1 << 16, 4096, 1):
            try:
                while True:
                    handle.write(b"\0" * chunk)
            except OSError:
                continue
    return filler

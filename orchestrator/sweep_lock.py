"""One driver per sweep: an exclusive lock on the sweep directory.

``signlock sweep`` and ``signlock resume`` (local, ``--address``, and the driver a SLURM job runs)
hold ``<sweep>/.driver.lock`` while they drive the sweep. The lock is an ``flock`` on that file,
so the kernel releases it however the holder dies; the file's text names the holder (host, pid,
since when). A second driver is refused with that name; a driver that finds the text of a holder
whose lock is gone (killed, crashed) takes the sweep over and says so.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from signlock.trainables.errors import UsageError
from signlock.trainables.layout import SweepDir


class SweepLockedError(UsageError):
    """Another driver holds the sweep."""


def _holder_text(raw: str) -> str:
    try:
        holder = json.loads(raw)
        return f"{holder['host']} pid {holder['pid']} since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


ATTEMPTS = 5  # a reader (`status`) may hold a shared lock for an instant


def _try_lock(fd: int, kind: int = fcntl.LOCK_EX, attempts: int = 1) -> bool:
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            if attempt + 1 < attempts:
                time.sleep(0.2)
            continue
        return True
    return False


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors="replace").strip()


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode())
    os.fsync(fd)


def driver_holder(sweep_dir: Path) -> str | None:
    """Who drives the sweep now ("HOST pid N since T"), or None when no driver holds it."""
    path = SweepDir(sweep_dir).driver_lock
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        if _try_lock(fd, fcntl.LOCK_SH):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _holder_text(_read(fd))
    finally:
        os.close(fd)


def refuse_if_driven(sweep_dir: Path) -> None:
    """Fail in one line when a driver holds the sweep (before submitting another one)."""
    holder = driver_holder(sweep_dir)
    if holder is not None:
        raise SweepLockedError(f"sweep {sweep_dir.name} is already being driven by {holder}")


@contextlib.contextmanager
def driver_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold the sweep for this process, or fail in one line naming the holder."""
    fd = os.open(SweepDir(sweep_dir).driver_lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _try_lock(fd, attempts=ATTEMPTS):
            holder = _holder_text(_read(fd))
            raise SweepLockedError(f"sweep {sweep_dir.name} is already being driven by {holder}")
        stale = _read(fd)
        if stale:
            print(
                f"taking over sweep {sweep_dir.name} from {_holder_text(stale)}, which is gone",
                file=sys.stderr,
            )
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        _write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since}))
        try:
            yield
        finally:
            _write(fd, "")
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

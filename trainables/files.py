"""Writing and reading the files of run and sweep directories safely.

Every file signlock writes goes to a uniquely named temporary file in its target directory and is
renamed over the target (:func:`atomic_path`), so a reader — or a crash, or a second writer —
never sees half a file; a full disk is one line (:class:`DiskFullError`) and leaves the previous
file as it was. Checkpoints are read only with ``torch.load(weights_only=True)``
(:func:`load_torch_file`): a file that holds anything but tensors and plain containers is
refused, never unpickled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from signlock.trainables.errors import ConfigError, SignlockError

_UMASK = os.umask(0)
os.umask(_UMASK)
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
NAME_ALLOWED = "one path component of letters, digits, '.', '_' and '-' (not '.' or '..')"


def check_name(field: str, value: str) -> str:
    """A trial or sweep name becomes a directory name: one safe path component."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or value in {".", ".."}:
        raise ConfigError(field, value, NAME_ALLOWED)
    return value


class DiskFullError(SignlockError, OSError):
    """The device filled up while writing ``path``; the previous file is intact."""

    def __init__(self, path: object) -> None:
        self.path = path
        super().__init__(f"no space left on device writing {path}")


class UnreadableFileError(SignlockError):
    """A file signlock needs is truncated, garbled or not what it should be (one line)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"unreadable file {path}: {reason}")


# What a full disk says through libraries that drop the errno (pyarrow, sqlite via SQLAlchemy).
DISK_FULL_MESSAGES = ("[Errno 28]", "No space left on device", "database or disk is full")


def is_disk_full(error: BaseException | None) -> bool:
    """ENOSPC or EDQUOT, also when a library wrapped it (torch's writer raises a RuntimeError
    whose context is the OSError; pyarrow's and sqlite's messages say so)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in DISK_FULL_MESSAGES):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A unique temporary path beside ``path``; renamed over ``path`` when the block succeeds,
    removed when it fails. ENOSPC anywhere inside becomes :class:`DiskFullError`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    tmp.chmod(0o666 & ~_UMASK)  # the mode a plain open() would give, not mkstemp's 0600
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            raise DiskFullError(target) from None
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, value: Any, **dumps: Any) -> None:
    write_text(path, json.dumps(value, **dumps))


def write_parquet(frame: Any, path: str | Path) -> None:
    """A pandas DataFrame as Parquet (no index), atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_csv(frame: Any, path: str | Path) -> None:
    """A pandas DataFrame as CSV (no index), atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_json(path: str | Path) -> Any:
    """Parsed JSON, or one line naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UnreadableFileError(path, f"not valid JSON ({_first_line(error)})") from None


def load_torch_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a truncated, garbage or pickle-bearing file is
    one line naming it (never a suggestion to unpickle it)."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError:
        if zipfile.is_zipfile(path):
            reason = "it holds Python objects other than tensors; signlock never unpickles those"
        else:
            reason = "truncated or not a torch checkpoint (not a zip archive of tensors)"
        raise UnreadableFileError(path, reason) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        reason = f"truncated or not a torch checkpoint ({_first_line(error)})"
        raise UnreadableFileError(path, reason) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__

"""The one exception hierarchy of signlock (every other folder re-uses it)."""


class SignlockError(Exception):
    """Base class of every error signlock raises on purpose."""


class UsageError(SignlockError):
    """The user asked for something invalid: the command stops before any work (exit 2)."""


class ConfigError(UsageError, ValueError):
    """A user-supplied value is invalid. The message is one line: field, value, allowed values."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {field}={value!r}: {allowed}")


class InputNotFoundError(UsageError, FileNotFoundError):
    """A file the user named does not exist."""

    def __init__(self, path: object) -> None:
        self.path = path
        super().__init__(f"not found: {path}")


class DatasetError(SignlockError):
    """A dataset cannot be found, downloaded or verified."""


class TrainingDivergedError(SignlockError):
    """The loss became NaN or infinite; the trial cannot continue."""


class SweepNotFoundError(InputNotFoundError):
    """No sweep of that name (or directory) under the storage: one message for every command."""

    def __init__(self, name: object, storage: object) -> None:
        self.path = name
        UsageError.__init__(self, f"not found: no sweep {name} under {storage}")

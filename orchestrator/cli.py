"""The ``signlock`` command line: the parser assembled from one module per command
(:mod:`signlock.orchestrator.commands`), and how errors end the process.

User errors (``UsageError``: a bad value, a missing file) print one line, ``signlock: error: …``,
and exit with status 2 before any work starts; other signlock errors (a diverged run, a failed
download) print one line and exit with 1; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from signlock.orchestrator.commands import COMMANDS
from signlock.trainables.errors import SignlockError, UsageError
from signlock.trainables.files import is_disk_full


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signlock", description="The ``signlock`` command line.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"signlock: error: {error}", file=sys.stderr)
        return 2
    except SignlockError as error:
        print(f"signlock: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `signlock presets | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:  # a full disk reached through a library: one line, not a traceback
        if not is_disk_full(error):
            raise
        where = getattr(error, "filename", None) or "the MLflow store or the sweep directory"
        print(f"signlock: error: no space left on device writing {where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Command-line flags generated from a backend's request dataclass: each field is one flag
(``--<field-name>``, or its metadata's ``flag``), typed from its annotation, described by its
metadata (:func:`signlock.cluster.slurm_request.flag`). Written once, in the dataclass."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING
from typing import Any

from signlock.trainables.errors import ConfigError

_NOT_ARGPARSE = ("flag", "repeatable")


def flag_name(field: dataclasses.Field) -> str:
    return str(field.metadata.get("flag") or "--" + field.name.replace("_", "-"))


def _scalar_type(hint: Any) -> type | None:
    """``int`` for ``int`` and ``int | None``; None (a string) for everything else."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return int if hint is int else None


def add_request_flags(group: argparse._ArgumentGroup, request_type: type) -> None:
    hints = typing.get_type_hints(request_type)
    for field in dataclasses.fields(request_type):
        options = {k: v for k, v in field.metadata.items() if k not in _NOT_ARGPARSE}
        if field.metadata.get("repeatable"):
            group.add_argument(flag_name(field), dest=field.name, action="append", default=[],
                               **options)  # fmt: skip
        else:
            group.add_argument(flag_name(field), dest=field.name,
                               type=_scalar_type(hints[field.name]), **options)  # fmt: skip


def given_request_fields(args: argparse.Namespace, request_type: type) -> dict[str, Any]:
    """The request's flags given on the command line, as the dataclass's fields."""
    given = {}
    for field in dataclasses.fields(request_type):
        value = getattr(args, field.name, None)
        if value not in (None, []):
            given[field.name] = tuple(value) if field.metadata.get("repeatable") else value
    return given


def request_from_args(args: argparse.Namespace, request_type: type, backend: str) -> Any:
    """The request the flags describe; a required field missing is one line naming its flag."""
    given = given_request_fields(args, request_type)
    for field in dataclasses.fields(request_type):
        has_default = (field.default, field.default_factory) != (MISSING, MISSING)
        if not has_default and field.name not in given:
            raise ConfigError(flag_name(field), None, f"a value with --backend {backend}")
    return request_type(**given)


def refuse_request_flags(args: argparse.Namespace, request_type: type, backend: str) -> None:
    """A flag of ``request_type`` given to another backend: one line naming it."""
    for field in dataclasses.fields(request_type):
        value = getattr(args, field.name, None)
        if value not in (None, []):
            raise ConfigError(flag_name(field), value, f"only with --backend {backend}")

"""``signlock query``: MLflow runs as a table, filtered with numeric comparisons on params.

MLflow stores params as strings and its own filter compares them as strings only, so
``params.a_init > 0.01`` cannot be pushed down. We fetch the experiment's runs with
``mlflow.search_runs`` (optionally narrowed by an MLflow ``--mlflow-filter``) and apply our
filter in pandas: clauses joined by ``and``, each ``<params|metrics|tags|attributes>.<key>
<op> <value>`` with op in ``= == != < <= > >=``; numbers compare numerically, quoted values as
strings. A short key (``params.a_init``) resolves to the one dotted param ending in it
(``params.init.a_init``) when that is unambiguous.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from signlock.trainables.errors import ConfigError, SweepNotFoundError
from signlock.trainables.files import write_parquet, write_text
from signlock.trainables.records import as_integers, typed_values
from signlock.trainables.schema import (
    ANALYSIS_COUNT_METRICS,
    RESULT_METRICS,
    SUMMARY_INT_FIELDS,
    SWEEP_COUNT_METRICS,
)

FORMATS = ("table", "csv", "json", "parquet")
_OPS: dict[str, Callable[[object, object], object]] = {
    "==": operator.eq,
    "=": operator.eq,
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_CLAUSE = re.compile(
    r"^\s*(?P<column>(params|metrics|tags|attributes)\.[\w.`\-/]+?)\s*"
    r"(?P<op>==|!=|<=|>=|=|<|>)\s*(?P<value>.+?)\s*$"
)
_PREFIXES = {"params.", "metrics.", "tags.", "attributes."}


def parse_filter(text: str) -> list[tuple[str, str, object]]:
    """``"params.a_init > 0.01 and metrics.val_ppl < 5"`` → [(column, op, value), …]."""
    clauses: list[tuple[str, str, object]] = []
    if not text.strip():
        return clauses
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        match = _CLAUSE.match(part)
        if match is None:
            raise ConfigError(
                "--filter",
                part,
                "clauses '<params|metrics|tags|attributes>.KEY OP VALUE' joined by 'and', "
                "OP one of = == != < <= > >=",
            )
        raw = match["value"]
        value: object
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            value = raw[1:-1]
        else:
            try:
                value = float(raw)
            except ValueError as error:
                raise ConfigError("--filter", raw, "a number or a quoted string") from error
        clauses.append((match["column"].replace("`", ""), match["op"], value))
    return clauses


def resolve_column(column: str, columns: pd.Index) -> str:
    if column in columns:
        return column
    prefix = next(p for p in _PREFIXES if column.startswith(p))
    if prefix == "attributes.":
        plain = column.removeprefix(prefix)
        if plain in columns:
            return plain
    suffix = "." + column.removeprefix(prefix)
    matches = [c for c in columns if c.startswith(prefix) and c.endswith(suffix)]
    if len(matches) == 1:
        return matches[0]
    known = sorted(c for c in columns if c.startswith(prefix))
    hint = f"ambiguous, one of {matches}" if matches else f"one of {known[:40]}"
    raise ConfigError("--filter", column, hint)


def apply_filter(runs: pd.DataFrame, text: str | None) -> pd.DataFrame:
    if not text:
        return runs
    keep = pd.Series(True, index=runs.index)
    for column, op, value in parse_filter(text):
        name = resolve_column(column, runs.columns)
        series = runs[name]
        if isinstance(value, float):
            series = pd.to_numeric(series, errors="coerce")
            keep &= series.notna() & _OPS[op](series, value)
        else:
            keep &= _OPS[op](series.astype("string"), value).fillna(False).astype(bool)
    return runs[keep]


# Metrics MLflow stores as doubles that count things: integers in every output format.
INTEGER_METRICS = (*SUMMARY_INT_FIELDS, *SWEEP_COUNT_METRICS, *ANALYSIS_COUNT_METRICS)


def typed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """``params.*`` back to their types (MLflow keeps strings) and counting metrics as Int64."""
    typed = runs.copy()
    for column in runs.columns:
        if column.startswith("params."):
            typed[column] = typed_values(runs[column])
        elif column.removeprefix("metrics.") in INTEGER_METRICS and column.startswith("metrics."):
            typed[column] = as_integers(runs[column])
    return typed


def search_runs(
    tracking_uri: str,
    experiment: str,
    *,
    filter_text: str | None = None,
    mlflow_filter: str | None = None,
    include_sweeps: bool = False,
    sweep: str | None = None,
) -> pd.DataFrame:
    """Runs of ``experiment`` (trial runs only unless ``include_sweeps``; only ``sweep``'s when
    given, which must exist), filtered, params typed. The filter is parsed before the store is
    opened; a missing local store is an error, never created."""
    from signlock.orchestrator import tracking

    parse_filter(filter_text or "")
    if sweep is not None and not _is_sweep_name(sweep):
        raise SweepNotFoundError(sweep, tracking_uri)
    runs = tracking.search_runs_frame(tracking_uri, experiment, mlflow_filter or "", sweep=sweep)
    if not include_sweeps and tracking.KIND_COLUMN in runs.columns:
        runs = runs[runs[tracking.KIND_COLUMN] == "trial"].dropna(axis="columns", how="all")
    return apply_filter(typed_runs(runs), filter_text).reset_index(drop=True)


def _is_sweep_name(name: str) -> bool:
    """What a sweep can be called (search_spaces.spec's rule): anything else names none."""
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) is not None


DEFAULT_COLUMNS = (
    "run_id",
    "tags.mlflow.runName",
    "status",
    "tags.signlock.sweep",
    "params.init.a_init",
    "params.regularizer.lam",
    "params.optim.lr",
    "params.seed",
    *(f"metrics.{metric}" for metric in RESULT_METRICS),
)


def check_format(fmt: str, output: Path | None) -> None:
    """``--format``/``--output`` as :func:`write_runs` takes them (checked before searching)."""
    if fmt not in FORMATS:
        raise ConfigError("--format", fmt, "one of " + ", ".join(FORMATS))
    if fmt == "parquet" and output is None:
        raise ConfigError("--output", None, "a file path (parquet is binary)")


def write_runs(runs: pd.DataFrame, fmt: str, output: Path | None, all_columns: bool) -> str:
    """Render as table/csv/json (returned) or parquet (written to ``output``)."""
    check_format(fmt, output)
    if not all_columns:
        runs = runs[[c for c in DEFAULT_COLUMNS if c in runs.columns]]
    if fmt == "parquet":
        assert output is not None
        write_parquet(runs, output)
        return f"{len(runs)} runs written to {output}"
    if fmt == "csv":
        text = runs.to_csv(index=False)
    elif fmt == "json":
        text = runs.to_json(orient="records", date_format="iso", indent=2)
    else:
        text = runs.to_string(index=False) if len(runs) else "(no runs)"
    if output is not None:
        write_text(output, text)
        return f"{len(runs)} runs written to {output}"
    return text

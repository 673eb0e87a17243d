"""A sweep directory as DataFrames, for the analysis commands and for notebooks::

    from signlock.analysis import load_sweep
    sweep = load_sweep("enhancement")            # a name under signlock-runs/sweeps, or a path
    sweep.trials                                  # one row per finished trial: config + summary
    sweep.flips(tensors=["__pooled__"])           # K histograms (trial, tensor, k, count)
    sweep.metrics(columns=["flip_vs_init"])       # every trial's logged rows (trial, step, …)

Parquet is read with ``pyarrow.dataset`` and column projection, one Hive partition per trial,
so only what a caller asks for is materialised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from signlock.search_spaces.axes import Axis
from signlock.search_spaces.spec import SweepSpec
from signlock.trainables.config import field_hint
from signlock.trainables.errors import SweepNotFoundError
from signlock.trainables.files import UnreadableFileError
from signlock.trainables.layout import FLIPS, SUMMARIES, TENSOR_METRICS, SweepDir
from signlock.trainables.records import (
    SweepRecord,
    as_integers,
    read_summaries,
    typed_values,
)
from signlock.trainables.schema import SUMMARY_INT_FIELDS, validation_objective

DEFAULT_STORAGE = Path("signlock-runs") / "sweeps"
POOLED = "__pooled__"


def axis_column(axis: Axis) -> str:
    return f"config.{axis.key}"


def is_sampled(axis: Axis) -> bool:
    """Random axes are continuous: scatter plots, no grouping by value."""
    return axis.kind != "grid"


def log_spaced(axis: Axis) -> bool:
    """Plot on a log axis: loguniform, or positive grid values spanning two decades or more."""
    if axis.kind == "loguniform":
        return True
    numbers = [v for v in axis.values if isinstance(v, int | float) and v > 0]
    return len(numbers) >= 3 and max(numbers) / min(numbers) >= 100


@dataclass(frozen=True)
class Sweep:
    directory: Path
    record: SweepRecord
    trials: pd.DataFrame  # finished trials: name, config.<field> of varied fields, summary

    @property
    def name(self) -> str:
        return self.record.context.sweep_name

    @property
    def spec(self) -> SweepSpec:
        return SweepSpec.from_dict(self.record.context.spec)

    @property
    def n_planned(self) -> int:
        return self.record.n_trials

    @property
    def n_missing(self) -> int:
        return max(self.n_planned - len(self.trials), 0)

    @property
    def axes(self) -> tuple[Axis, ...]:
        return self.spec.axes

    @property
    def grid_axes(self) -> tuple[Axis, ...]:
        return tuple(axis for axis in self.axes if not is_sampled(axis))

    @property
    def point_keys(self) -> tuple[str, ...]:
        """Fields the spec's ``points`` vary that are not grid axes (e.g. the models of the scale
        sweep, the schedules of D.4.5), in the order they first appear."""
        axis_keys = {axis.key for axis in self.axes}
        keys = [k for point in self.spec.points for k in point if k not in axis_keys]
        return tuple(k for k in dict.fromkeys(keys) if f"config.{k}" in self.trials)

    @property
    def figure_axes(self) -> tuple[Axis, ...]:
        """What (ĥ, ĝ) is drawn against: every axis; for a sweep of points only, the point field
        that names them best (the number of layers for model scale, the width, the schedule)."""
        if self.axes or not self.point_keys:
            return self.axes
        preferred = ("model.n_layers", "model.d_model", "schedule.kind", "data.batch_size")
        key = next((k for k in preferred if k in self.point_keys), self.point_keys[0])
        values = tuple(dict.fromkeys(self.trials[f"config.{key}"].dropna()))
        return (Axis(key, "grid", values),)

    @property
    def group_columns(self) -> list[str]:
        """A grid point: every grid axis and point field, not the seed."""
        keys = [axis.key for axis in self.grid_axes] + list(self.point_keys)
        return [f"config.{k}" for k in dict.fromkeys(keys) if f"config.{k}" in self.trials]

    @property
    def validation_metric(self) -> str:
        return validation_objective(self.spec.base)

    def flips(
        self, *, tensors: Sequence[str] | None = None, trials: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """K histograms: trial, tensor, k, count (only the tensors/trials asked for)."""
        path = SweepDir(self.directory).dataset(FLIPS)
        return _read_dataset(path, ["tensor", "k", "count"], tensors, trials)

    def blocks(self) -> pd.DataFrame:
        """flip(t) and the step flip rate per block and step (see :func:`block_metrics`)."""
        return block_metrics(self.directory, list(self.trials["name"]))

    def metrics(
        self, columns: Sequence[str] = ("flip_vs_init", "step_flip_rate"), *, trials=None
    ) -> pd.DataFrame:
        """Every trial's ``metrics.parquet`` rows: trial, step and ``columns``."""
        frames = []
        for name in trials if trials is not None else self.trials["name"]:
            path = SweepDir(self.directory).run(name).metrics
            if path.is_file():
                frame = read_parquet_file(path, columns=["step", *columns])
                frames.append(frame.assign(trial=name))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


ARROW_ERRORS = (pa.ArrowException, OSError)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def read_parquet_file(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One Parquet file, or one line naming it when it is truncated or garbled."""
    try:
        return pd.read_parquet(path, columns=list(columns) if columns is not None else None)
    except ARROW_ERRORS as error:
        reason = f"not a readable Parquet file ({_first_line(error)})"
        raise UnreadableFileError(path, reason) from None


def unreadable_dataset(directory: Path, error: BaseException) -> UnreadableFileError:
    """The error for a Parquet dataset that cannot be read: it names the first file whose
    footer does not open (hidden files, which Arrow skips, aside), else the folder."""
    for path in sorted(directory.rglob("*.parquet")):
        if any(part.startswith((".", "_")) for part in path.relative_to(directory).parts):
            continue
        try:
            pq.read_metadata(path)
        except ARROW_ERRORS as bad:
            return UnreadableFileError(path, f"not a readable Parquet file ({_first_line(bad)})")
    return UnreadableFileError(directory, f"not a readable Parquet dataset ({_first_line(error)})")


BLOCK_PATTERNS = (
    (re.compile(r"^blocks\.(\d+)\."), "block {}"),  # GPT Transformer blocks (C.3.6)
    (re.compile(r"^layers\.(\d+)\."), "layer {}"),  # the MNIST MLP's Linear layers
    (re.compile(r"^(?:tok_emb|pos_emb)\."), "embedding"),
    (re.compile(r"^lm_head\."), "head"),
)


def block_of(tensor: str) -> str:
    """The part of the model a tensor belongs to (C.3.6): ``block i``, ``embedding``, ``head``,
    ``layer i`` for the MLP; otherwise the tensor's own name."""
    for pattern, label in BLOCK_PATTERNS:
        match = pattern.match(tensor)
        if match:
            return label.format(*match.groups())
    return tensor


def _block_sort_key(block: str) -> tuple[int, int, str]:
    order = {"embedding": 0, "head": 3, POOLED: 4}
    if block.startswith(("block ", "layer ")):
        return 1, int(block.split()[1]), block
    return order.get(block, 2), 0, block


def _read_dataset(
    directory: Path,
    columns: list[str],
    tensors: Sequence[str] | None,
    trials: Sequence[str] | None,
) -> pd.DataFrame:
    if not directory.is_dir():
        return pd.DataFrame(columns=["trial", *columns])
    condition = None
    if tensors is not None:
        condition = pads.field("tensor").isin(list(tensors))
    if trials is not None:
        by_trial = pads.field("trial").isin(list(trials))
        condition = by_trial if condition is None else condition & by_trial
    try:
        dataset = pads.dataset(directory, format="parquet", partitioning="hive")
        table = dataset.to_table(columns=["trial", *columns], filter=condition)
    except ARROW_ERRORS as error:
        raise unreadable_dataset(directory, error) from None
    frame = table.to_pandas()
    frame["trial"] = frame["trial"].astype(str)
    return frame


BLOCK_METRICS = ("flip_vs_init", "step_flip_rate")
KEY_SPAN = 1 << 20  # (step, block) packed into one int64: step · KEY_SPAN + block id


FOLD_EVERY = 16


def _fold(keys: list[np.ndarray], sums: list[np.ndarray]) -> tuple[list, list]:
    """Partial sums of several batches → one array per distinct key."""
    unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    stacked = np.concatenate(sums)
    folded = np.stack(
        [np.bincount(inverse, weights=stacked[:, i], minlength=unique.size)
         for i in range(stacked.shape[1])],
        axis=1,
    )  # fmt: skip
    return [unique], [folded]


def block_metrics(directory: Path, trials: Sequence[str] | None = None) -> pd.DataFrame:
    """Per block and step (and ``__pooled__`` over the whole model), the tracked-scalar-weighted
    means of flip(t) and the step flip rate over every tensor of the block and every trial,
    streamed from the ``tensor_metrics/``
    dataset batch by batch (memory bounded by a batch, whatever the dataset's size)."""
    path = SweepDir(directory).dataset(TENSOR_METRICS)
    empty = pd.DataFrame(columns=["step", "block", *BLOCK_METRICS])
    if not path.is_dir():
        return empty
    condition = pads.field("trial").isin(list(trials)) if trials is not None else None
    columns = ["step", "tensor", "n_tracked", *BLOCK_METRICS]
    block_ids: dict[str, int] = {}
    try:
        dataset = pads.dataset(path, format="parquet", partitioning="hive")
        batches = dataset.to_batches(
            columns=columns,
            filter=condition,
            batch_size=1 << 20,
            fragment_readahead=2,
            batch_readahead=2,
        )
        keys_seen, sums_seen = _partial_sums(batches, block_ids)
    except ARROW_ERRORS as error:
        raise unreadable_dataset(path, error) from None
    if not keys_seen:
        return empty
    (keys,), (totals,) = _fold(keys_seen, sums_seen)
    steps, block_id = np.divmod(keys, KEY_SPAN)
    names_by_id = np.array(sorted(block_ids, key=block_ids.__getitem__), dtype=object)
    sums_by_metric = {m: totals[:, i + 1] for i, m in enumerate(BLOCK_METRICS)}
    frame = pd.DataFrame(
        {"step": steps, "block": names_by_id[block_id], "n": totals[:, 0], **sums_by_metric}
    )
    pooled = frame.groupby("step", as_index=False)[["n", *BLOCK_METRICS]].sum()
    frame = pd.concat([frame, pooled.assign(block=POOLED)], ignore_index=True)
    for metric in BLOCK_METRICS:
        frame[metric] = frame[metric] / frame["n"]
    means = frame.drop(columns="n")
    means["order"] = means["block"].map(_block_sort_key)
    return means.sort_values(["order", "step"]).drop(columns="order").reset_index(drop=True)


def _partial_sums(
    batches: Iterable[pa.RecordBatch], block_ids: dict[str, int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per batch, the distinct step·KEY_SPAN + block id keys and [Σ n, Σ n·metric …] per key,
    folded every FOLD_EVERY batches (memory bounded by a batch)."""
    keys_seen: list[np.ndarray] = []
    sums_seen: list[np.ndarray] = []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        tensors = pc.dictionary_encode(batch.column("tensor"))
        names = tensors.dictionary.to_pylist()
        per_name = np.array([block_ids.setdefault(block_of(n), len(block_ids)) for n in names])
        blocks = per_name[tensors.indices.to_numpy(zero_copy_only=False)]
        steps = batch.column("step").to_numpy(zero_copy_only=False).astype(np.int64)
        weights = batch.column("n_tracked").to_numpy(zero_copy_only=False).astype(np.float64)
        keys, inverse = np.unique(steps * KEY_SPAN + blocks, return_inverse=True)
        values = [weights] + [
            batch.column(m).to_numpy(zero_copy_only=False) * weights for m in BLOCK_METRICS
        ]
        sums = [np.bincount(inverse, weights=v, minlength=keys.size) for v in values]
        keys_seen.append(keys)
        sums_seen.append(np.stack(sums, axis=1))
        if len(keys_seen) >= FOLD_EVERY:  # keep memory flat: fold the partial sums
            keys_seen, sums_seen = _fold(keys_seen, sums_seen)
    return keys_seen, sums_seen


# Columns that count things: Int64 (nullable) in every table, however they were stored.
INTEGER_COLUMNS = (*SUMMARY_INT_FIELDS, "step", "failures")


def _integer_field(column: str) -> bool:
    if column in INTEGER_COLUMNS:
        return True
    if not column.startswith("config."):
        return False
    try:
        return field_hint(column.removeprefix("config.")) is int
    except KeyError:
        return False


def restore_integers(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its counting columns and integer config fields as Int64 — e.g. read back
    from a CSV, where a column with gaps comes back as floats (``step`` 60.0)."""
    typed = table.copy()
    for column in table.columns:
        if _integer_field(str(column)):
            typed[column] = as_integers(table[column])
    return typed


def _read_summaries(directory: Path) -> pd.DataFrame:
    try:
        return read_summaries(directory)
    except ARROW_ERRORS as error:
        raise unreadable_dataset(SweepDir(directory).dataset(SUMMARIES), error) from None


def finished_trials(directory: Path, record: SweepRecord) -> pd.DataFrame:
    """One row per finished trial from the ``summaries/`` dataset: name, ``config.<field>`` for
    every field the sweep varies (typed: integers as Int64, missing as NA), and the summary's
    numbers (its counts as Int64)."""
    summaries = _read_summaries(directory).reset_index()
    if summaries.empty:
        return pd.DataFrame(columns=["name"])
    varied = SweepSpec.from_dict(record.context.spec).varied_keys()
    config = {f"config.{k}": typed_values(summaries[k]) for k in varied if k in summaries}
    numbers = summaries.select_dtypes("number")
    table = pd.concat([summaries[["trial"]].rename(columns={"trial": "name"}),
                       pd.DataFrame(config), numbers], axis=1)  # fmt: skip
    return restore_integers(table).sort_values("name", ignore_index=True)


def load_sweep(name_or_path: str | Path, storage: str | Path = DEFAULT_STORAGE) -> Sweep:
    """A sweep by directory, or by name under ``storage``: its record and finished trials."""
    candidate = Path(name_or_path).expanduser()
    directory = candidate if SweepDir(candidate).record.is_file() else Path(storage) / candidate
    if not SweepDir(directory).record.is_file():
        raise SweepNotFoundError(name_or_path, storage)
    directory = directory.resolve()
    record = SweepRecord.read(directory)
    return Sweep(directory, record, finished_trials(directory, record))

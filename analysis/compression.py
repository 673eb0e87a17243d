"""``signlock compress``: the performance-vs-bits curves of Figure 20 from a sweep's trials.

For every finished trial, method (:mod:`signlock.analysis.compressors`) and target budget, the
targeted matrices of the final checkpoint are compressed one by one at the largest setting
within the budget, the model is evaluated on the held-out split with the compressed matrices in
place (the trial's own deterministic evaluation: perplexity for language, accuracy for vision),
and one row records the achieved bpw_eff over all targeted matrices with its decomposition.

* Targets (E.3.5): every matrix-shaped weight except embeddings and the head (names containing
  ``emb`` or ``lm_head``), unless named.
* Template methods regenerate each target's sign template from the trial's config (its
  template seed) and are refused, with the reason in the row, for a trial without a template or
  whose weights disagree with it anywhere (sign(W) = T, exact zeros allowed).
* WANDA's input norms come from one training batch (the trial's own batch size, drawn with a
  fixed seed) through forward hooks on the targeted Linear layers.
* A budget a method cannot reach gets a row with its reason and no metric.

``compression.parquet`` columns: ``COLUMNS``. Rows already in it are not recomputed.

:func:`compress_sweep` is ``signlock compress``'s workflow: the CLI hands it an ``execute``
callback that runs the trials' jobs as Ray tasks, and logs the returned
:class:`~signlock.analysis.outputs.Outputs` on the sweep's parent run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from signlock.analysis.bit_accounting import DEFAULT_BUDGETS, BitAccount
from signlock.analysis.compressors import (
    METHODS,
    Compressed,
    MatrixContext,
    Method,
    Unreachable,
)
from signlock.analysis.outputs import Outputs
from signlock.trainables.errors import ConfigError
from signlock.trainables.files import atomic_path, write_parquet
from signlock.trainables.layout import RunDir, SweepDir
from signlock.trainables.schema import (
    VAL_ACCURACY,
    VAL_ERROR,
    VAL_PPL,
    compression_metric,
    validation_objective,
)
from signlock.trainables.sharded import checkpoint_model_state

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from signlock.analysis.sweep_data import Sweep
    from signlock.trainables.trainer import Trial

COLUMNS = (
    "trial", "seed", "method", "bpw_target", "bpw_eff", "sign_bits", "value_bits", "index_bits",
    "side_bits", "weights", "metric_name", "metric", "status",
)  # fmt: skip
UNCOMPRESSED = "uncompressed"
EXCLUDED_TARGETS = ("emb", "lm_head")
CALIBRATION_SEED = 1234
ONE_BIT = 1.0
TABLE_NAME = "compression.parquet"  # the files of <sweep>/compression/
FIGURE_NAME = "compression.png"
RAY_LOG_NAME = "ray.log"


@dataclass(frozen=True)
class CompressionJob:
    """One trial's work, JSON-able so a Ray task can carry it."""

    trial: str
    run_dir: str
    methods: tuple[str, ...]
    budgets: tuple[float, ...]
    targets: tuple[str, ...] = ()
    done: tuple[tuple[str, float], ...] = ()  # (method, budget) rows already written


def validate_methods(methods: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(methods)
    for name in chosen:
        if name not in METHODS:
            raise ConfigError("--methods", name, "some of " + ", ".join(METHODS))
    return chosen


def validate_budgets(budgets: Iterable[float]) -> tuple[float, ...]:
    chosen = tuple(budgets)
    for budget in chosen:
        if not (math.isfinite(budget) and budget > 0):
            raise ConfigError("--bpw", budget, "bits per weight > 0")
    return chosen


def validate_targets(run_dirs: Iterable[Path], targets: tuple[str, ...]) -> tuple[str, ...]:
    """``targets`` checked against every trial's model, built from its ``config.json`` on the
    meta device (no weights, no data), before any task starts: one-line ConfigError."""
    from signlock.trainables.models import build_model
    from signlock.trainables.trainer import load_run_config

    if not targets:
        return targets
    checked: set[str] = set()
    for run_dir in run_dirs:
        model_cfg = load_run_config(run_dir).model
        key = repr(model_cfg)
        if key in checked:
            continue
        checked.add(key)
        # Parameter names do not depend on the vocabulary size (taken from the data at run time).
        target_matrices(build_model(model_cfg, vocab_size=1, device="meta"), targets)
    return targets


# ---- one trial --------------------------------------------------------------------------------


def compress_trial(job: CompressionJob) -> list[dict[str, Any]]:
    """Every (method, budget) row of one trial not in ``job.done``; its uncompressed row too."""
    from signlock.trainables.interventions import Interventions
    from signlock.trainables.trainer import Trial, load_run_config

    run_dir = Path(job.run_dir)
    cfg = load_run_config(run_dir).with_overrides({"device": "cpu"})
    trial = Trial(cfg, run_dir, progress=False)
    trial.model.load_state_dict(checkpoint_model_state(RunDir(run_dir).checkpoint))
    targets = target_matrices(trial.model, job.targets)
    originals = {name: p.detach().clone() for name, p in targets}
    templates = Interventions(cfg, trial.model).templates
    refusal = template_refusal(originals, templates)
    norms = input_norms(trial, [name for name, _ in targets])
    metric_name = compression_metric(validation_objective(cfg))  # its family's metric
    base = {"trial": job.trial, "seed": cfg.seed, "metric_name": metric_name}
    rows = []
    if (UNCOMPRESSED, 0.0) not in job.done:
        weights = sum(p.numel() for p in originals.values())
        rows.append(
            {**base, "method": UNCOMPRESSED, "bpw_target": 0.0, "bpw_eff": math.nan,
             **_bits(BitAccount(weights)), "metric": evaluate(trial, metric_name), "status": "ok"}
        )  # fmt: skip
    for method_name in job.methods:
        method = METHODS[method_name]()
        for budget in job.budgets:
            if (method_name, budget) in job.done:
                continue
            row = {**base, "method": method_name, "bpw_target": budget}
            if method.needs_template and refusal:
                rows.append(_unreached(row, refusal))
                continue
            contexts = {
                name: MatrixContext(templates.get(name), norms.get(name), seed=index)
                for index, name in enumerate(originals)
            }
            outcome = compress_all(method, originals, budget, contexts)
            if isinstance(outcome, Unreachable):
                rows.append(_unreached(row, outcome.reason))
                continue
            metric = evaluate_with(trial, targets, outcome, metric_name)
            account = sum((c.account for c in outcome.values()), BitAccount(0))
            rows.append(
                {**row, "bpw_eff": account.bpw_eff, **_bits(account), "metric": metric,
                 "status": "ok"}
            )  # fmt: skip
    return rows


def _bits(account: BitAccount) -> dict[str, int]:
    return {
        "sign_bits": account.sign_bits,
        "value_bits": account.value_bits,
        "index_bits": account.index_bits,
        "side_bits": account.side_bits,
        "weights": account.weights,
    }


def _unreached(row: dict[str, Any], reason: str) -> dict[str, Any]:
    return {**row, "bpw_eff": math.nan, **_bits(BitAccount(0)), "metric": math.nan,
            "status": reason}  # fmt: skip


def target_matrices(
    model: torch.nn.Module, names: tuple[str, ...]
) -> list[tuple[str, torch.nn.Parameter]]:
    matrices = [(n, p) for n, p in model.named_parameters() if p.dim() == 2]
    if names:
        by_name = dict(matrices)
        for name in names:
            if name not in by_name:
                raise ConfigError("--targets", name, "matrix weights: " + ", ".join(by_name))
        return [(name, by_name[name]) for name in names]
    return [(n, p) for n, p in matrices if not any(word in n for word in EXCLUDED_TARGETS)]


def template_refusal(
    weights: dict[str, torch.Tensor], templates: dict[str, torch.Tensor]
) -> str | None:
    """Why the template methods cannot run on these weights (None: every sign is T's)."""
    for name, weight in weights.items():
        template = templates.get(name)
        if template is None:
            return f"refused: {name} has no sign template (trial without init.template_rank)"
        disagreeing = int((weight.double() * template.double() < 0).sum())
        if disagreeing:
            return f"refused: sign(W) != T at {disagreeing} entries of {name} (no projection)"
    return None


def input_norms(trial: Trial, names: list[str]) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ of each targeted Linear's input over one fixed training batch (WANDA)."""
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        module = trial.model.get_submodule(name.rsplit(".", 1)[0])
        if not isinstance(module, torch.nn.Linear):
            continue

        def record(_module: Any, inputs: tuple[torch.Tensor, ...], _out: Any, key=name) -> None:
            x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1])
            sums[key] = sums.get(key, 0) + x.square().sum(dim=0)

        hooks.append(module.register_forward_hook(record))
    try:
        x, _ = trial.task.train_batch(torch.Generator().manual_seed(CALIBRATION_SEED))
        with torch.no_grad():
            trial.model.eval()
            trial.model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: total.sqrt() for name, total in sums.items()}


def compress_all(
    method: Method,
    weights: dict[str, torch.Tensor],
    budget: float,
    contexts: dict[str, MatrixContext],
) -> dict[str, Compressed] | Unreachable:
    done = {}
    for name, weight in weights.items():
        outcome = method.compress(weight, budget, contexts[name])
        if isinstance(outcome, Unreachable):
            return Unreachable(f"{name}: {outcome.reason}")
        done[name] = outcome
    return done


def evaluate(trial: Trial, metric_name: str) -> float:
    metrics = trial.task.evaluate(trial.model)
    if metric_name == VAL_ACCURACY:
        return 1.0 - metrics[VAL_ERROR]
    return metrics[metric_name]


def evaluate_with(
    trial: Trial,
    targets: list[tuple[str, torch.nn.Parameter]],
    compressed: dict[str, Compressed],
    metric_name: str,
) -> float:
    """The metric with the compressed matrices in place; the originals are put back after."""
    saved = {name: p.detach().clone() for name, p in targets}
    try:
        with torch.no_grad():
            for name, param in targets:
                param.copy_(compressed[name].weight.to(param.dtype))
        return evaluate(trial, metric_name)
    finally:
        with torch.no_grad():
            for name, param in targets:
                param.copy_(saved[name])


# ---- a sweep ----------------------------------------------------------------------------------


def read_table(path: Path) -> pd.DataFrame:
    if path.is_file():
        return pd.read_parquet(path)
    return pd.DataFrame(columns=list(COLUMNS))


def plan_jobs(
    trials: dict[str, Path],
    table: pd.DataFrame,
    methods: tuple[str, ...],
    budgets: tuple[float, ...],
    targets: tuple[str, ...] = (),
) -> list[CompressionJob]:
    """One job per trial with rows still missing from ``table``."""
    jobs = []
    for trial, run_dir in trials.items():
        mine = table[table.trial == trial]
        done = tuple(zip(mine.method, mine.bpw_target.astype(float), strict=True))
        wanted = [(m, b) for m in methods for b in budgets] + [(UNCOMPRESSED, 0.0)]
        if all(item in done for item in wanted):
            continue
        jobs.append(CompressionJob(trial, str(run_dir), methods, budgets, targets, done))
    return jobs


def merge_rows(table: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    if not rows:
        return table
    new = pd.DataFrame(rows, columns=list(COLUMNS))
    merged = new if table.empty else pd.concat([table, new], ignore_index=True)
    return merged.sort_values(["trial", "method", "bpw_target"], ignore_index=True)


def write_table(table: pd.DataFrame, path: Path) -> None:
    """Atomically, so an interrupted run keeps the rows it had."""
    write_parquet(table, path)


Rows = list[dict[str, Any]]
# (jobs, the file for Ray's output) -> each finished job's rows, in any order (the CLI: Ray tasks)
Execute = Callable[[list[CompressionJob], Path], Iterable[Rows]]


def run_compression(
    jobs: list[CompressionJob],
    table_path: Path,
    execute: Callable[[list[CompressionJob]], Iterable[Rows]],
) -> pd.DataFrame:
    """Run ``jobs`` through ``execute`` (rows per finished job, in any order), adding each
    trial's rows to the table as soon as they arrive."""
    table = read_table(table_path)
    results = execute(jobs)
    try:
        for rows in results:
            table = merge_rows(table, rows)
            write_table(table, table_path)
    finally:
        if isinstance(results, Generator):  # its progress bar and Ray connection, now
            results.close()
    return table


def finished_trials(sweep: Sweep) -> dict[str, Path]:
    """Trial name → run directory of each finished trial with a checkpoint (one-line
    ConfigError when there is none)."""
    sweep_files = SweepDir(sweep.directory)
    trials = {
        name: sweep_files.run(name).path
        for name in sweep.trials["name"]
        if sweep_files.run(name).checkpoint.is_file()
    }
    if not trials:
        raise ConfigError("SWEEP", sweep.name, "a sweep with finished trials and checkpoints")
    return trials


def point_labels(sweep: Sweep) -> dict[str, str]:
    """Trial name → its grid point's label in the figure (``a_init=0.02, …``)."""
    return {
        row["name"]: ", ".join(f"{c.removeprefix('config.')}={row[c]}" for c in sweep.group_columns)
        for _, row in sweep.trials.iterrows()
    }


def compress_sweep(
    sweep: Sweep,
    methods: tuple[str, ...],
    budgets: tuple[float, ...],
    targets: tuple[str, ...],
    execute: Execute,
) -> Outputs:
    """``signlock compress``: every finished trial's missing rows (``targets`` checked against
    each trial's model before any work) into ``<sweep>/compression/compression.parquet``, then
    the figure; the table and the figure (when any budget was reached) as :class:`Outputs`."""
    trials = finished_trials(sweep)
    targets = validate_targets(trials.values(), targets)
    out = SweepDir(sweep.directory).compression
    out.mkdir(exist_ok=True)
    table_path = out / TABLE_NAME
    jobs = plan_jobs(trials, read_table(table_path), methods, budgets, targets)
    table = run_compression(jobs, table_path, lambda pending: execute(pending, out / RAY_LOG_NAME))
    figure = save_figure(table, point_labels(sweep), out / FIGURE_NAME)
    return Outputs(out, (table_path, *([figure] if figure else [])), {})


def budgets_reached(outputs: Outputs) -> str:
    """How many rows of the table reached their budget, in words."""
    table = read_table(outputs.directory / TABLE_NAME)
    return f"{int((table.status == 'ok').sum())} of {len(table)} rows reached their budget"


# ---- figure -----------------------------------------------------------------------------------


MAX_PANELS = 6


def compression_figure(table: pd.DataFrame, points: dict[str, str]) -> Figure | None:
    """Performance vs bpw_eff per method, one panel per grid point (``points``: trial → its
    point's label), mean ± std over that point's seeds at each target (Figure 20), with the
    one-bit line and the point's uncompressed mean."""
    labelled = table.assign(point=table.trial.map(points).fillna(""))
    reached = labelled[(labelled.status == "ok") & (labelled.method != UNCOMPRESSED)]
    if reached.empty:
        return None
    metric_name = str(reached.metric_name.iloc[0])
    panels = list(dict.fromkeys(reached.point))[:MAX_PANELS]
    figure, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 4.5), sharey=True, squeeze=False
    )
    for axis, point in zip(axes[0], panels, strict=False):
        _draw_point(axis, labelled[labelled.point == point], metric_name)
        axis.set_title(point or "all trials", fontsize=9)
    axes[0][0].set_ylabel(metric_name)
    axes[0][-1].legend(fontsize=7)
    figure.suptitle("Performance vs effective bits per weight (Fig. 20)")
    return figure


def _draw_point(axis: Axes, rows: pd.DataFrame, metric_name: str) -> None:
    reached = rows[(rows.status == "ok") & (rows.method != UNCOMPRESSED)]
    for method, group in reached.groupby("method", sort=True):
        stats = group.groupby("bpw_target").agg(
            x=("bpw_eff", "mean"), y=("metric", "mean"), err=("metric", "std")
        )
        axis.errorbar(stats.x, stats.y, yerr=stats.err.fillna(0), marker="o", capsize=3,
                      label=method)  # fmt: skip
    axis.axvline(ONE_BIT, color="red", linestyle="--", label="one bit per weight")
    baseline = rows[rows.method == UNCOMPRESSED].metric
    if not baseline.empty:
        axis.axhline(baseline.mean(), color="grey", linestyle=":", label="uncompressed")
    if metric_name == VAL_PPL:
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
        axis.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
    axis.set_xlabel("effective bits per weight (bpw_eff)")
    axis.grid(alpha=0.3)


class PlainLogFormatter(LogFormatter):
    """Matplotlib's choice of which log-axis ticks to label, written as plain numbers (48, not
    4.8×10¹)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return plain_number(x) if super().__call__(x, pos) else ""


def plain_number(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def save_figure(table: pd.DataFrame, points: dict[str, str], path: Path) -> Path | None:
    figure = compression_figure(table, points)
    if figure is None:
        return None
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


__all__ = [
    "COLUMNS",
    "DEFAULT_BUDGETS",
    "CompressionJob",
    "compress_sweep",
    "compress_trial",
    "plan_jobs",
    "run_compression",
    "save_figure",
]

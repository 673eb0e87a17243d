"""One training trial: build data, model, interventions and sign tracker from a ``TrialConfig``,
train, and write the run directory.

Run directory layout (a run directory alone is enough to resume or reproduce the trial)::

    config.json          the TrialConfig
    metrics.parquet      one row every ``log_every`` steps (``schema.METRIC_COLUMNS``)
    flips.parquet        K histogram: tensor (str), k (int64), count (int64); "__pooled__" sums
    tensor_stats.parquet per-tensor lock-in statistics of the sign tracker
    tensor_metrics.parquet per tracked tensor, every ``log_every`` steps (long format,
                         ``schema.TENSOR_METRIC_COLUMNS``)
    summary.json         final metrics: every ``schema.SUMMARY_FIELDS``, null when not measured
    checkpoints/latest.pt model, optimizer, scheduler, RNG, tracker state (torch.load weights_only)
    checkpoints/latest.json {"step": N} of that checkpoint
    checkpoints/previous.pt (+ .json) the checkpoint before it, resumed from when latest.pt is
                         unreadable

Every file is written to a unique temporary name beside it and renamed (``files.atomic_path``).

Nothing here knows about Ray or MLflow: callers observe progress through ``Reporter``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from signlock.trainables.config import TrialConfig, config_differences
from signlock.trainables.errors import ConfigError, TrainingDivergedError
from signlock.trainables.files import (
    UnreadableFileError,
    atomic_path,
    load_torch_file,
    read_json,
    write_json,
    write_parquet,
    write_text,
)
from signlock.trainables.interventions import Interventions, resolve_targets
from signlock.trainables.layout import PREVIOUS_CHECKPOINT_NAME, RunDir
from signlock.trainables.models import build_model
from signlock.trainables.schedules import LRMultiplier
from signlock.trainables.schema import (
    METRIC_COLUMNS,
    SUMMARY_FIELDS,
    TENSOR_METRIC_COLUMNS,
    VALIDATION_METRICS,
)
from signlock.trainables.tasks import make_task
from signlock.trainables.tracker import SignTracker

DATA_SEED_OFFSET = 1

Reporter = Callable[[dict[str, float], Path | None], None]
"""Called after each logged row with that row and the checkpoint path if one was just written."""


@dataclass(frozen=True)
class Restored:
    """The checkpoint a trial resumed from, and why newer ones were passed over."""

    step: int
    path: Path
    skipped: tuple[str, ...] = field(default_factory=tuple)  # one line per unreadable newer one


def checkpoint_files(checkpoint: Path) -> tuple[Path, Path]:
    """``latest.pt`` and the ``previous.pt`` kept beside it, newest first."""
    return checkpoint, checkpoint.with_name(PREVIOUS_CHECKPOINT_NAME)


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", requested, "'cpu' or 'auto' (no CUDA device is available)")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass
class _Window:
    """Accumulators between two logged rows."""

    loss_sum: float = 0.0
    steps: int = 0
    projection_changes: int = 0
    last_penalty: float = 0.0
    last_lam: float = 0.0
    last_lr: float = 0.0

    def add(
        self, loss: float, projection_changes: int, penalty: float, lam: float, lr: float
    ) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.projection_changes += projection_changes
        self.last_penalty = penalty
        self.last_lam = lam
        self.last_lr = lr


def _make_optimizer(
    cfg: TrialConfig, model: nn.Module, device: torch.device
) -> tuple[torch.optim.Optimizer, str]:
    opt = cfg.optim
    kwargs = {
        "lr": opt.lr,
        "betas": (opt.beta1, opt.beta2),
        "eps": opt.eps,
        "weight_decay": opt.weight_decay,
    }
    if opt.eight_bit and device.type == "cuda":
        try:
            import bitsandbytes as bnb  # optional: C.5's AdamW8bit
        except ImportError:
            pass
        else:
            return bnb.optim.AdamW8bit(model.parameters(), **kwargs), "AdamW8bit"
    return torch.optim.AdamW(model.parameters(), **kwargs), "AdamW"


class Trial:
    """One configured training run bound to a run directory."""

    def __init__(self, cfg: TrialConfig, run_dir: str | Path, *, progress: bool = True) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.device = resolve_device(cfg.device)
        if cfg.threads is not None and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.task = make_task(cfg, self.device)
        self.model = build_model(cfg.model, vocab_size=self.task.vocab_size, device=self.device)
        self.interventions = Interventions(cfg, self.model)
        self.interventions.initialize(cfg.seed)
        self._after_initialization()
        self.optimizer, self.optimizer_name = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, LRMultiplier.from_config(cfg.schedule, cfg.steps)
        )
        self.tracker = self._make_tracker()
        self.data_generator = torch.Generator().manual_seed(cfg.seed + DATA_SEED_OFFSET)
        self.step = 0
        self.rows: list[dict[str, float]] = []
        self.tensor_rows: list[dict[str, Any]] = []  # tensor_metrics.parquet
        self.projection_total = 0
        self.train_seconds = 0.0
        self.window = _Window()
        self.autocast = self._autocast_context()
        self.restored: Restored | None = None

    def _after_initialization(self) -> None:
        """Called once the weights hold their initial values, before the optimizer is built (a
        sharded trial shards the model here)."""

    @property
    def writes_outputs(self) -> bool:
        """Whether this process writes the run directory (one rank of a sharded trial does)."""
        return True

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.task.train_batch(self.data_generator)

    def _mean_over_ranks(self, value: float) -> float:
        """``value`` averaged over the ranks that each trained on a slice of the batch."""
        return value

    def _sum_over_ranks(self, value: float) -> float:
        return value

    def _make_optimizer(self) -> tuple[torch.optim.Optimizer, str]:
        return _make_optimizer(self.cfg, self.model, self.device)

    def _make_tracker(self) -> SignTracker | None:
        tracker_cfg = self.cfg.tracker
        if not tracker_cfg.enabled:
            return None
        targets = resolve_targets(self.model, tracker_cfg.targets, "tracker.targets")
        return SignTracker(
            targets,
            rho=tracker_cfg.rho,
            eps=tracker_cfg.eps,
            sample_per_tensor=tracker_cfg.sample_per_tensor,
            sample_seed=tracker_cfg.sample_seed,
        )

    def _autocast_context(self) -> Callable[[], Any]:
        if self.cfg.model.dtype != "bfloat16":
            return nullcontext
        # C.5: bf16 autocast for the forward pass.
        return lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)

    @property
    def checkpoint_path(self) -> Path:
        return RunDir(self.run_dir).checkpoint

    # ---- the loop -------------------------------------------------------------------------

    def run(
        self,
        reporter: Reporter | None = None,
        *,
        resume: bool = True,
    ) -> dict[str, Any]:
        """Train to ``cfg.steps`` (continuing from the run dir's newest readable checkpoint when
        ``resume`` and :meth:`restore` was not called) and write all outputs. Raises
        ``TrainingDivergedError`` on a non-finite loss after writing what was computed so far."""
        if resume and self.restored is None:
            self.restore()  # refuses a changed config: nothing written
        if self.writes_outputs:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
        self.model.train()
        bar = self._progress_bar()
        try:
            while self.step < self.cfg.steps:
                self.train_step()
                bar.update(1)
                if self._should_log():
                    row = self._log_row()
                    bar.set_postfix(
                        loss=f"{row['train_loss']:.3f}", flip=f"{row['flip_vs_init']:.4f}"
                    )
                    saved = self._maybe_checkpoint()
                    if reporter is not None:
                        reporter(row, saved)
        except TrainingDivergedError:
            self._write_tables()
            raise
        finally:
            bar.close()
        self.save_checkpoint(self.checkpoint_path)
        self._write_tables()
        summary = self._summary()
        if self.writes_outputs:
            write_json(RunDir(self.run_dir).summary, summary, indent=2, sort_keys=True)
        return summary

    def train_step(self) -> None:
        """One optimizer step (with projection and tracker observation); ``run`` calls it."""
        started = time.perf_counter()
        x, y = self._next_batch()
        with self.autocast():
            task_loss = self.task.loss(self.model, x, y)
        penalty, lam_t = self.interventions.penalty(self.step)
        loss = task_loss if penalty is None else task_loss + penalty
        loss_value = self._mean_over_ranks(float(task_loss.detach()))
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(
                f"training loss became {loss_value} at step {self.step}; "
                f"outputs so far are in {self.run_dir}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        lr_used = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        changed = int(self._sum_over_ranks(self.interventions.project()))
        if self.tracker is not None:
            self.tracker.observe()
        self.step += 1
        self.projection_total += changed
        penalty_value = self._sum_over_ranks(
            float(penalty.detach()) if penalty is not None else 0.0
        )
        self.window.add(loss_value, changed, penalty_value, lam_t, lr_used)
        self.train_seconds += time.perf_counter() - started

    def _should_log(self) -> bool:
        return self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps

    def _should_eval(self) -> bool:
        eval_every = self.cfg.eval_every or self.cfg.log_every
        return self.step % eval_every == 0 or self.step == self.cfg.steps

    def _log_row(self) -> dict[str, float]:
        row: dict[str, float] = dict.fromkeys(METRIC_COLUMNS, math.nan)
        row.update(
            step=self.step,
            train_loss=self.window.loss_sum / max(self.window.steps, 1),
            lr=self.window.last_lr,
            lam=self.window.last_lam,
            penalty=self.window.last_penalty,
            projection_changes=self.window.projection_changes,
            elapsed_s=self.train_seconds,
        )
        if self.tracker is not None:
            row.update(self.tracker.window_stats())
            tensors = self.tracker.tensor_window_stats()
            self.tensor_rows.extend({"step": self.step, **r} for r in tensors)
        if self._should_eval():
            row.update(self.task.evaluate(self.model))
        self.rows.append(row)
        self.window = _Window()
        return row

    def _maybe_checkpoint(self) -> Path | None:
        every = self.cfg.checkpoint_every
        if every is None or self.step % every != 0 or self.step == self.cfg.steps:
            return None
        self.save_checkpoint(self.checkpoint_path)
        self._write_tables()
        return self.checkpoint_path

    def _progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=self.cfg.steps,
            initial=self.step,
            desc=self.cfg.name,
            unit="step",
            disable=not (self.progress and self.writes_outputs),
            leave=False,
            dynamic_ncols=True,
        )

    # ---- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            **self._progress_state(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "tracker": self.tracker.state_dict() if self.tracker is not None else None,
        }

    def _progress_state(self) -> dict[str, Any]:
        """Everything of a checkpoint but the weights, optimizer moments and tracker state."""
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "data": self.data_generator.get_state(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "step": self.step,
            "config": self.cfg.to_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "rows": self.rows,
            "tensor_rows": self.tensor_rows,
            "projection_total": self.projection_total,
            "train_seconds": self.train_seconds,
        }

    def save_checkpoint(self, path: Path) -> None:
        """Write atomically (unique temp file + rename), keeping the checkpoint it replaces as
        ``previous.pt``: a crash, a full disk or a corrupt newest file leaves one to resume. A
        ``.json`` sidecar records the step, so callers can compare checkpoints without loading
        them."""
        latest, previous = checkpoint_files(path)
        with atomic_path(path) as tmp:
            with tmp.open("wb") as handle:  # a Python file: a full disk surfaces as OSError
                torch.save(self.state_dict(), handle)
            if latest.exists():
                os.replace(latest, previous)
                if latest.with_suffix(".json").exists():
                    os.replace(latest.with_suffix(".json"), previous.with_suffix(".json"))
        write_json(path.with_suffix(".json"), {"step": self.step})

    def restore(self) -> Restored | None:
        """Load the newest readable checkpoint of the run directory (``latest.pt``, else
        ``previous.pt``); None when there is none. A checkpoint of another config is refused
        (``ConfigError``); when every checkpoint is unreadable, one line naming the newest."""
        skipped: list[str] = []
        first_error: UnreadableFileError | None = None
        for candidate in checkpoint_files(self.checkpoint_path):
            if not candidate.exists():
                continue
            try:
                self.load_checkpoint(candidate)
            except UnreadableFileError as error:
                skipped.append(str(error))
                first_error = first_error or error
                continue
            self.restored = Restored(self.step, candidate, tuple(skipped))
            return self.restored
        if first_error is not None:
            raise UnreadableFileError(
                first_error.path,
                f"{first_error.reason}; no earlier readable checkpoint (--no-resume starts over)",
            )
        return None

    def load_checkpoint(self, path: Path) -> None:
        state = self._read_checkpoint(path, required={"config", "step"})
        if "state_dir" in state:
            raise ConfigError(
                "workers_per_trial",
                1,
                f"a sharded trial: {path} was written by {state.get('world_size')} workers "
                "(signlock.trainables.sharded resumes it on any number of workers)",
            )
        if "model" not in state:
            raise UnreadableFileError(path, "not a signlock trial checkpoint")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.tracker is not None:
            self.tracker.load_state_dict(state["tracker"])
        self._load_progress(state)

    def _read_checkpoint(self, path: Path, required: set[str]) -> dict[str, Any]:
        """A checkpoint file of this trial's config (``ConfigError`` for another config)."""
        state = load_torch_file(path, map_location=self.device)
        if not isinstance(state, dict) or not required <= state.keys():
            raise UnreadableFileError(path, "not a signlock trial checkpoint")
        changed = config_differences(state["config"], self.cfg.to_dict())
        if changed:
            raise ConfigError(
                "config",
                str(path),
                f"the trial config of this checkpoint; these fields differ: {', '.join(changed)} "
                "(choose another --run-dir, or --no-resume to start over)",
            )
        return state

    def _load_progress(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.data_generator.set_state(state["rng"]["data"].cpu())
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        self.rows = list(state["rows"])
        self.tensor_rows = list(state.get("tensor_rows", []))
        self.projection_total = state["projection_total"]
        self.train_seconds = state["train_seconds"]

    # ---- outputs --------------------------------------------------------------------------

    def _write_config(self) -> None:
        write_text(RunDir(self.run_dir).config, self.cfg.to_json())

    def _write_tables(self) -> None:
        tracker_tables = self._tracker_tables() if self.tracker is not None else None
        if not self.writes_outputs:
            return
        metrics = pd.DataFrame(self.rows, columns=list(METRIC_COLUMNS))
        metrics["step"] = metrics["step"].astype("int64")
        files = RunDir(self.run_dir)
        write_parquet(metrics, files.metrics)
        if tracker_tables is not None:
            flips, tensor_stats = tracker_tables
            write_parquet(flips, files.flips)
            write_parquet(tensor_stats, files.tensor_stats)
            tensor_metrics = pd.DataFrame(self.tensor_rows, columns=list(TENSOR_METRIC_COLUMNS))
            tensor_metrics = tensor_metrics.astype({"step": "int64", "n_tracked": "int64"})
            write_parquet(tensor_metrics, files.tensor_metrics)

    def _tracker_tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The K histogram and per-tensor statistics (collectives on a sharded tracker: every
        rank computes them, one writes)."""
        assert self.tracker is not None
        return self.tracker.k_histogram(), self.tracker.per_tensor_stats()

    def _summary(self) -> dict[str, Any]:
        """Every ``schema.SUMMARY_FIELDS`` key; ``None`` (JSON null) where not measured."""
        last_eval = next((r for r in reversed(self.rows) if not math.isnan(r["val_loss"])), {})
        measured: dict[str, Any] = {
            "name": self.cfg.name,
            "steps": self.step,
            "optimizer": self.optimizer_name,
            "device": str(self.device),
            "wall_time_s": self.train_seconds,
            "steps_per_s": self.step / self.train_seconds if self.train_seconds else None,
            "projection_changes_total": self.projection_total,
            "final_train_loss": self.rows[-1]["train_loss"] if self.rows else None,
        }
        for key in VALIDATION_METRICS:
            measured[key] = last_eval.get(key)
        if self.tracker is not None:
            measured.update(self.tracker.summary())
        return {key: _measured(measured.get(key)) for key in SUMMARY_FIELDS}


def _measured(value: Any) -> Any:
    """NaN means 'not measured' in the rows; in summary.json that is null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def run_trial(
    cfg: TrialConfig,
    run_dir: str | Path,
    *,
    reporter: Reporter | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Build and run one trial; returns its summary (also written to ``summary.json``)."""
    return Trial(cfg, run_dir, progress=progress).run(reporter, resume=resume)


def checkpoint_step(path: Path) -> int:
    """The step of the newest checkpoint whose ``.json`` sidecar is readable (``latest``, else
    ``previous``); -1 when there is none. Loads no weights."""
    for candidate in checkpoint_files(path):
        sidecar = candidate.with_suffix(".json")
        if not candidate.is_file() or not sidecar.is_file():
            continue
        try:
            return int(read_json(sidecar)["step"])
        except (UnreadableFileError, KeyError, TypeError, ValueError):
            continue
    return -1


def load_run_config(run_dir: str | Path) -> TrialConfig:
    """The TrialConfig a run directory was made with."""
    return TrialConfig.from_file(RunDir(Path(run_dir)).config)

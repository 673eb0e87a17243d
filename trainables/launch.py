"""Run one sharded trial on N worker processes of this machine (``signlock train
--workers-per-trial N``): gloo on CPU, NCCL with one GPU per worker on CUDA, the process group
on 127.0.0.1. Ray Train and SLURM launch the same :class:`~signlock.trainables.sharded.
ShardedTrial` on their own workers.

A signlock error on a worker (a bad value, a checkpoint of another config, a diverged loss)
ends every worker and is raised here as the same one-line error; anything else keeps its
traceback.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from signlock.trainables import errors
from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError, SignlockError
from signlock.trainables.files import read_json
from signlock.trainables.layout import RunDir

JOIN_TIMEOUT = datetime.timedelta(minutes=30)


def check_workers(cfg: TrialConfig, workers: int) -> None:
    """Refuse (one line) a worker count this trial cannot run with, before any process starts."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("workers_per_trial", workers, "an integer >= 1")
    if cfg.data.batch_size % workers:
        raise ConfigError(
            "data.batch_size",
            cfg.data.batch_size,
            f"a multiple of workers_per_trial={workers} (each worker takes a slice)",
        )
    if cfg.device == "cuda" and workers > torch.cuda.device_count():
        raise ConfigError(
            "workers_per_trial",
            workers,
            f"at most {torch.cuda.device_count()} (one GPU per worker on this machine)",
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int,
    workers: int,
    port: int,
    cfg_json: str,
    run_dir: str,
    resume: bool,
    progress: bool,
    error_dir: str,
) -> None:
    import torch.distributed as dist

    from signlock.trainables.sharded import ShardedTrial

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cfg = TrialConfig.from_dict(json.loads(cfg_json))
    on_gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if on_gpu:
        torch.cuda.set_device(rank)
    backend = "nccl" if on_gpu else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=workers, timeout=JOIN_TIMEOUT)
    try:
        trial = ShardedTrial(cfg, run_dir, progress=progress)
        restored = trial.restore() if resume else None
        if restored is not None and rank == 0:
            print(
                f"resuming {run_dir} from step {restored.step} on {workers} workers",
                file=sys.stderr,
            )
        trial.run(resume=False)
    except SignlockError as error:
        Path(error_dir, f"rank{rank}.json").write_text(
            json.dumps({"type": type(error).__name__, "message": str(error)})
        )
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()


def run_on_local_workers(
    cfg: TrialConfig,
    run_dir: str | Path,
    workers: int,
    *,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``cfg`` sharded over ``workers`` processes; the summary rank 0 wrote."""
    import torch.multiprocessing as mp

    check_workers(cfg, workers)
    with tempfile.TemporaryDirectory(prefix="signlock-workers-") as error_dir:
        args = (workers, _free_port(), cfg.to_json(), str(run_dir), resume, progress, error_dir)
        try:
            mp.spawn(_worker, args=args, nprocs=workers, join=True)
        except mp.ProcessExitedException as exited:
            _raise_worker_error(Path(error_dir), exited)
            raise
    return read_json(RunDir(Path(run_dir)).summary)


def _raise_worker_error(error_dir: Path, exited: BaseException) -> None:
    """Re-raise the first signlock error a worker recorded, as a one-line error of its kind."""
    recorded = sorted(error_dir.glob("rank*.json"))
    if not recorded:
        return
    error = json.loads(recorded[0].read_text())
    kind = getattr(errors, error["type"], SignlockError)
    usage = issubclass(kind, errors.UsageError)
    raise (errors.UsageError if usage else SignlockError)(error["message"]) from exited

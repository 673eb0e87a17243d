"""A trial over several ranks: FSDP2 (``fully_shard``) over a ``torch.distributed`` world, exact
sign tracking per shard, checkpoints that resume under another world size.

The science is the one-process trial's (:class:`~signlock.trainables.trainer.Trial`):

* every rank builds and initialises the whole model exactly as one process with the same seed
  would (gap init, template), then shards it: each block of every ``nn.ModuleList`` (a GPT's
  transformer blocks) and the root, on dim 0 (``Shard(0)``, uneven pieces, some maybe empty);
* every rank draws the same global batch and trains on its slice (``data.batch_size`` must be a
  multiple of the world size); FSDP averages the gradients, so the update is the global batch's;
* the log-barrier and ℓ1 terms are summed over local entries and divided by the layer's global
  size, so each entry gets the one-process gradient; the projection uses the template's rows of
  the shard;
* the tracker is a :class:`~signlock.trainables.sharded_tracker.ShardedSignTracker` over the
  local shards: statistics are summed over the ranks.

Rank 0 writes the run directory (the same files as a one-process trial). A checkpoint is
``checkpoints/latest.pt`` (step, config, scheduler, data RNG, rows: small, written by rank 0 and
rotated to ``previous.pt`` as usual) naming a ``torch.distributed.checkpoint`` directory beside it
(model and optimizer, resharded on load) that also holds one portable tracker file per rank.
Directories no checkpoint names are removed after each save.

Nothing here knows about Ray or MLflow; a launcher (Ray Train, ``torchrun``) starts the ranks
and the process group.
"""

from __future__ import annotations

import math
import pickle
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError
from signlock.trainables.files import UnreadableFileError, atomic_path, load_torch_file
from signlock.trainables.interventions import Interventions, resolve_targets
from signlock.trainables.layout import RunDir
from signlock.trainables.sharded_tracker import (
    ProcessGroupShards,
    ShardedSignTracker,
    TensorShard,
    dim0_start,
)
from signlock.trainables.trainer import Trial, checkpoint_files

# What a DCP `.metadata` pickle may name (torch's FileSystemReader unpickles it unrestricted).
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": None,  # any of its dataclasses
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}
STATE_DIR_PREFIX = "state-"
TRACKER_PIECE = "tracker-rank{rank}.pt"


def dim0_rows(rows: int, world: int) -> list[int]:
    """FSDP2's split of ``rows`` over ``world`` ranks: ``torch.chunk`` sizes, then empty ones."""
    chunk = -(-rows // world)
    return [max(0, min(chunk, rows - r * chunk)) for r in range(world)]


def shard_model(model: nn.Module, mesh: Any) -> None:
    """``fully_shard`` each block of every ``nn.ModuleList``, then the root (torchtitan's
    layout: one all-gather per block)."""
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def local_shard(name: str, param: torch.Tensor, rank: int, world: int) -> TensorShard:
    """Where ``param``'s local piece (a DTensor's ``to_local()``) lies in the whole tensor."""
    local = param.to_local() if hasattr(param, "to_local") else param
    rows = dim0_rows(param.shape[0], world)
    if local.shape[0] != rows[rank]:
        raise RuntimeError(f"{name}: local shard has {local.shape[0]} rows, expected {rows[rank]}")
    row_numel = math.prod(param.shape[1:])
    return TensorShard(name, local, dim0_start(rows, rank, row_numel), param.numel())


class ShardedInterventions(Interventions):
    """The interventions of a sharded model: penalties over local entries scaled by the whole
    layer's size, the projection against the template rows of the local shard."""

    def __init__(self, base: Interventions, model: nn.Module, rank: int, world: int) -> None:
        self.cfg = base.cfg
        self.sigma_init, self.a_init = base.sigma_init, base.a_init
        self.init_targets = resolve_targets(model, self.cfg.init.targets, "init.targets")
        self.reg_targets = resolve_targets(
            model, self.cfg.regularizer.targets, "regularizer.targets"
        )
        self.templates = {}
        for name, param in self.init_targets:
            if name in base.templates:
                begin = sum(dim0_rows(param.shape[0], world)[:rank])
                rows = dim0_rows(param.shape[0], world)[rank]
                self.templates[name] = base.templates[name][begin : begin + rows]

    def _values(self, param: torch.Tensor) -> torch.Tensor:
        return param.to_local()

    def _layer_mean(self, terms: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        return terms.sum() / param.numel()  # Section 4: (1/mn) Σ, the sum split over ranks


class ShardedTrial(Trial):
    """One trial over the default process group (started by the caller), FSDP2-sharded."""

    def __init__(self, cfg: TrialConfig, run_dir: str | Path, *, progress: bool = True) -> None:
        if not dist.is_initialized():
            raise RuntimeError("ShardedTrial needs torch.distributed's process group")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if cfg.data.batch_size % self.world:
            raise ConfigError(
                "data.batch_size",
                cfg.data.batch_size,
                f"a multiple of workers_per_trial={self.world} (each worker takes a slice)",
            )
        super().__init__(cfg, run_dir, progress=progress)

    @property
    def writes_outputs(self) -> bool:
        return self.rank == 0

    def _after_initialization(self) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        self.mesh = init_device_mesh(self.device.type, (self.world,))
        shard_model(self.model, self.mesh)
        self.interventions = ShardedInterventions(
            self.interventions, self.model, self.rank, self.world
        )

    def _make_optimizer(self) -> tuple[torch.optim.Optimizer, str]:
        """``torch.optim.AdamW`` on the shards: bitsandbytes' AdamW8bit is not FSDP2-safe
        (bitsandbytes#1633), so ``optim.eight_bit`` is not honoured here (the planner counts
        AdamW's two moments for sharded trials)."""
        opt = self.cfg.optim
        optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=opt.lr,
            betas=(opt.beta1, opt.beta2),
            eps=opt.eps,
            weight_decay=opt.weight_decay,
        )
        return optimizer, "AdamW"

    def _make_tracker(self) -> ShardedSignTracker | None:  # type: ignore[override]
        tracker_cfg = self.cfg.tracker
        if not tracker_cfg.enabled:
            return None
        targets = resolve_targets(self.model, tracker_cfg.targets, "tracker.targets")
        shards = [local_shard(name, p, self.rank, self.world) for name, p in targets]
        return ShardedSignTracker(
            shards,
            ProcessGroupShards(device=self._collective_device()),
            rho=tracker_cfg.rho,
            eps=tracker_cfg.eps,
            sample_per_tensor=tracker_cfg.sample_per_tensor,
            sample_seed=tracker_cfg.sample_seed,
        )

    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super()._next_batch()
        per_rank = x.shape[0] // self.world
        rows = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        return x[rows], y[rows]

    def _all_reduce(self, value: float) -> float:
        buffer = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(buffer)
        return float(buffer.item())

    def _mean_over_ranks(self, value: float) -> float:
        return self._all_reduce(value) / self.world

    def _sum_over_ranks(self, value: float) -> float:
        return self._all_reduce(value)

    def _summary(self) -> dict[str, Any]:
        return {**super()._summary(), "device": f"{self.device} x{self.world}"}

    # ---- checkpoints ----------------------------------------------------------------------

    def _progress_state(self) -> dict[str, Any]:
        return {**super()._progress_state(), "world_size": self.world}

    def _state_dicts(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optimizer_state}

    def save_checkpoint(self, path: Path) -> None:
        """Model and optimizer into a new DCP directory (every rank its shards), the tracker
        piece of each rank beside them, then rank 0 points ``latest.pt`` at it atomically."""
        import torch.distributed.checkpoint as dcp

        names = [f"{STATE_DIR_PREFIX}{self.step:09d}-{uuid.uuid4().hex[:8]}"]
        dist.broadcast_object_list(names, src=0)
        state_dir = path.parent / names[0]
        dcp.save(self._state_dicts(), checkpoint_id=state_dir)
        if self.tracker is not None:
            piece = state_dir / TRACKER_PIECE.format(rank=self.rank)
            with atomic_path(piece) as tmp, tmp.open("wb") as handle:
                torch.save(self.tracker.portable_state(), handle)
        dist.barrier()
        if self.writes_outputs:
            self._state_dir_name = names[0]
            super().save_checkpoint(path)
            _remove_unnamed_state_dirs(path)
        dist.barrier()

    def state_dict(self) -> dict[str, Any]:
        """What ``latest.pt`` holds: progress and the name of its DCP directory."""
        return {**self._progress_state(), "state_dir": self._state_dir_name}

    def load_checkpoint(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._read_checkpoint(path, required={"config", "step"})
        if "state_dir" not in state:
            raise ConfigError(
                "workers_per_trial",
                self.world,
                f"1: {path} is a one-process checkpoint (resume it without --workers-per-trial)",
            )
        state_dir = sharded_state_dir(path, state)
        shards = self._state_dicts()
        dcp.load(shards, storage_reader=_safe_reader(state_dir))
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=shards["model"],
            optim_state_dict=shards["optimizer"],
        )
        if self.tracker is not None:
            pieces = sorted(state_dir.glob(TRACKER_PIECE.format(rank="*")))
            if not pieces:
                raise UnreadableFileError(state_dir, "sharded checkpoint without tracker pieces")
            self.tracker.load_portable([load_torch_file(p) for p in pieces])
        self._load_progress(state)


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles only DCP metadata: its dataclasses, torch.Size, dtypes, paths."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch":
            allowed = name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)
        else:
            names = _METADATA_GLOBALS.get(module, set())
            allowed = names is None or name in names
        if not allowed:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return super().find_class(module, name)


def _safe_reader(state_dir: Path) -> Any:
    """torch's DCP FileSystemReader whose ``.metadata`` is unpickled with an allowlist (tensor
    and object data it already reads with ``weights_only=True``)."""
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            path = state_dir / ".metadata"
            try:
                with path.open("rb") as handle:
                    metadata = _MetadataUnpickler(handle).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as error:
                raise UnreadableFileError(path, f"not DCP metadata ({error})") from None
            if getattr(metadata, "storage_meta", None) is None:
                from torch.distributed.checkpoint.metadata import StorageMeta

                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(state_dir)


def sharded_state_dir(path: Path, state: dict[str, Any]) -> Path:
    """The DCP directory a sharded ``latest.pt``/``previous.pt`` names (checked to exist)."""
    state_dir = path.parent / Path(str(state["state_dir"])).name
    if not (state_dir / ".metadata").is_file():
        raise UnreadableFileError(state_dir, "sharded checkpoint without its .metadata")
    return state_dir


def consolidated_model_state(path: Path, state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The whole model's weights (CPU tensors by parameter name) of the sharded checkpoint
    ``path`` whose loaded contents are ``state``, read in this one process (``probe``,
    ``compress``); no process group needed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    state_dir = sharded_state_dir(path, state)
    reader = _safe_reader(state_dir)
    entries = reader.read_metadata().state_dict_metadata
    model = {
        key.removeprefix("model."): torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
        for key, entry in entries.items()
        if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)
    }
    dcp.load({"model": model}, storage_reader=_safe_reader(state_dir))
    return model


def checkpoint_model_state(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a trial checkpoint, one-process or sharded (consolidated)."""
    state = load_torch_file(path, map_location="cpu")
    if isinstance(state, dict) and "state_dir" in state:
        return consolidated_model_state(path, state)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UnreadableFileError(path, "not a signlock trial checkpoint")
    return state["model"]


def _remove_unnamed_state_dirs(path: Path) -> None:
    """Remove the DCP directories neither ``latest.pt`` nor ``previous.pt`` names (older
    checkpoints, and a save a crash interrupted)."""
    named = set()
    for candidate in checkpoint_files(path):
        if candidate.is_file():
            try:
                named.add(str(load_torch_file(candidate)["state_dir"]))
            except (UnreadableFileError, KeyError, TypeError):
                continue
    for state_dir in path.parent.glob(f"{STATE_DIR_PREFIX}*"):
        if state_dir.is_dir() and state_dir.name not in named:
            shutil.rmtree(state_dir, ignore_errors=True)


def is_sharded_run(run_dir: str | Path) -> bool:
    """Whether the run directory's checkpoints are sharded ones (resumed through this module,
    on any number of workers)."""
    checkpoints = RunDir(Path(run_dir)).checkpoint.parent
    return any(p.is_dir() for p in checkpoints.glob(f"{STATE_DIR_PREFIX}*"))


def run_sharded_trial(
    cfg: TrialConfig, run_dir: str | Path, *, resume: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Build and run one trial on the ranks of the default process group; the summary."""
    return ShardedTrial(cfg, run_dir, progress=progress).run(resume=resume)

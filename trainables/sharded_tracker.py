"""The sign tracker of a trial whose weights are sharded over ranks (FSDP2's dim-0 ``Shard(0)``).

Each rank tracks the scalars of its local shards with a :class:`~signlock.trainables.tracker.
SignTracker`; every statistic is built from integer counts and K histograms summed over the
shard group, never averaged per rank (a rank may hold an empty shard). The definitions are the
tracker's (Section 3.1, Definitions 3.1/3.2, C.4.2), so the summed statistics equal those of one
process tracking the whole tensors, exactly:

* a shard is the flat, row-major range [start, start + numel_local) of its tensor;
* sampled tracking draws the single-process coordinates (``sample_coordinates`` over the global
  numel, one generator walking the tensors in order) and keeps those inside the shard;
* per-tensor counts (n, flips vs init, τ1 hits, K > 0, ΣK, crossings, band skips), the window
  crossings and the K histograms are summed with ``ShardGroup.sum``.

Checkpoints are per rank and portable across world sizes (:meth:`ShardedSignTracker.
portable_state` / :meth:`ShardedSignTracker.load_portable`): per-scalar state and K bytes keyed
by global flat index, τ1 and K-overflow entries by global index; the cumulative counts that are
not per scalar (crossings, band skips) are carried by one owner rank per tensor, so their group
sum stays exact when a trial resumes with another number of ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from signlock.trainables._tracker_base import POOLED, TrackerStatistics, sample_coordinates
from signlock.trainables.errors import ConfigError
from signlock.trainables.tracker import SignTracker

COUNT_KEYS = ("n", "flips_init", "tau_hits", "k_positive", "k_sum", "crossings", "band_skips")
PORTABLE_VERSION = 1


class ShardGroup(Protocol):
    """The ranks that together hold each tensor once (FSDP's shard group, not HSDP's replicas)."""

    rank: int
    size: int

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the group of an int64 CPU tensor (same shape on every rank)."""
        ...

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum over the group of an int64 CPU tensor."""
        ...


class ProcessGroupShards:
    """A :class:`ShardGroup` over a ``torch.distributed`` process group (None: the default).
    Collectives run on ``device`` (NCCL needs CUDA tensors; gloo takes CPU ones)."""

    def __init__(self, group: Any = None, device: torch.device | str = "cpu") -> None:
        import torch.distributed as dist

        self._dist = dist
        self.group = group
        self.device = torch.device(device)
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)

    def _reduce(self, values: torch.Tensor, op: Any) -> torch.Tensor:
        buffer = values.to(device=self.device, dtype=torch.int64).clone()
        self._dist.all_reduce(buffer, op=op, group=self.group)
        return buffer.cpu()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return self._reduce(values, self._dist.ReduceOp.SUM)

    def max(self, values: torch.Tensor) -> torch.Tensor:
        return self._reduce(values, self._dist.ReduceOp.MAX)


class SingleShard:
    """The group of one rank holding every tensor whole (for a world size of 1)."""

    rank = 0
    size = 1

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return values.to(torch.int64)

    def max(self, values: torch.Tensor) -> torch.Tensor:
        return values.to(torch.int64)


@dataclass(frozen=True)
class TensorShard:
    """This rank's part of one tracked tensor: its local values (updated in place) and where
    they lie in the whole tensor's flat, row-major order."""

    name: str
    local: torch.Tensor
    start: int  # global flat index of local's first scalar
    numel: int  # scalars in the whole tensor

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.start + self.local.numel() <= self.numel:
            raise ConfigError(
                "tracker.shard",
                f"{self.name}[{self.start}:{self.start + self.local.numel()}]",
                f"a range inside [0, {self.numel})",
            )


def dim0_start(rows_per_rank: Sequence[int], rank: int, row_numel: int) -> int:
    """Global flat index of rank ``rank``'s first scalar when a tensor is split on dim 0 into
    consecutive pieces of ``rows_per_rank`` rows of ``row_numel`` scalars."""
    return sum(rows_per_rank[:rank]) * row_numel


class ShardedSignTracker(TrackerStatistics):
    """Sign lock-in statistics of tensors sharded over ``group``; the API of ``SignTracker``
    (``observe``, ``window_stats``, ``tensor_window_stats``, ``per_tensor_stats``,
    ``k_histogram``, ``summary``). Every rank must make the same calls in the same order:
    statistics are collectives."""

    def __init__(
        self,
        shards: Sequence[TensorShard],
        group: ShardGroup,
        *,
        rho: float = 1e-3,
        eps: float = 1e-4,
        sample_per_tensor: int | None = None,
        sample_seed: int = 0,
        backend: str = "auto",
    ) -> None:
        shards = list(shards)
        whole = [(s.name, s.local if s.local.numel() else s.local.new_zeros(1)) for s in shards]
        self._start(whole, rho, eps, sample_per_tensor, sample_seed)
        self.group = group
        self.shards = shards
        self._local_names, self.local = self._local_tracker(backend)
        local_n = torch.zeros(len(shards), dtype=torch.int64)
        for j, size in self._local_sizes().items():
            local_n[j] = size
        self._n_per_tensor = group.sum(local_n).tolist()
        if 0 in self._n_per_tensor:
            empty = self.tensor_names[self._n_per_tensor.index(0)]
            raise ConfigError("tracker.named_params", empty, "tensors with a tracked scalar")
        self.n_tracked = sum(self._n_per_tensor)

    # ----- which scalars this rank tracks -----

    def _local_indices(self) -> list[torch.Tensor | None]:
        """Per shard: the flat local coordinates it tracks (None: all of them)."""
        if self.sample_per_tensor is None:
            return [None] * len(self.shards)
        generator = torch.Generator(device="cpu").manual_seed(self.sample_seed)
        out = []
        for shard in self.shards:
            chosen = sample_coordinates(shard.numel, self.sample_per_tensor, generator)
            inside = (chosen >= shard.start) & (chosen < shard.start + shard.local.numel())
            out.append(chosen[inside] - shard.start)
        return out

    def _local_tracker(self, backend: str) -> tuple[list[int], SignTracker | None]:
        kept, named, indices = [], [], []
        for j, (shard, index) in enumerate(zip(self.shards, self._local_indices(), strict=True)):
            size = shard.local.numel() if index is None else index.numel()
            if size:
                kept.append(j)
                named.append((shard.name, shard.local))
                indices.append(index)
        if not named:
            return kept, None
        tracker = SignTracker(
            named,
            rho=self.rho,
            eps=self.eps,
            sample_per_tensor=self.sample_per_tensor,
            sample_seed=self.sample_seed,
            backend=backend,
            indices=indices if self.sample_per_tensor is not None else None,
        )
        return kept, tracker

    def _local_sizes(self) -> dict[int, int]:
        if self.local is None:
            return {}
        sizes, _ = self.local._sizes_and_numels()
        return dict(zip(self._local_names, sizes, strict=True))

    # ----- observing -----

    @torch.no_grad()
    def observe(self) -> None:
        """Record the next observation on this rank's shards (call after each optimizer step)."""
        self.steps += 1
        self._window_steps += 1
        if self.local is not None:
            self.local.observe()

    # ----- statistics, summed over the group -----

    def _local_count_matrix(self) -> torch.Tensor:
        matrix = torch.zeros(len(self.shards), len(COUNT_KEYS), dtype=torch.int64)
        if self.local is not None:
            for j, counts in zip(self._local_names, self.local._per_tensor_counts(), strict=True):
                matrix[j] = torch.tensor([counts[key] for key in COUNT_KEYS])
        return matrix

    def _per_tensor_counts(self) -> list[dict[str, int]]:
        summed = self.group.sum(self._local_count_matrix()).tolist()
        return [dict(zip(COUNT_KEYS, row, strict=True)) for row in summed]

    def window_stats(self) -> dict[str, float]:
        local_window = self.local._window_crossings if self.local is not None else 0
        if self.local is not None:
            self.local._window_steps = self.local._window_crossings = 0
        (window_crossings,) = self.group.sum(torch.tensor([local_window])).tolist()
        counts = self._per_tensor_counts()
        flips = sum(c["flips_init"] for c in counts)
        hits = sum(c["tau_hits"] for c in counts)
        crossings_so_far = sum(c["crossings"] for c in counts)
        n_steps = self._window_steps
        self._window_steps = 0
        n = self.n_tracked
        return {
            "flip_vs_init": flips / n,
            "flip_mean": crossings_so_far / (n * self.steps) if self.steps else 0.0,
            "step_flip_rate": window_crossings / (n * n_steps) if n_steps else 0.0,
            "boundary_hit_fraction": hits / n,
        }

    def k_histogram(self) -> pd.DataFrame:
        """The K histogram of the whole tensors: per-rank histograms summed over the group."""
        local_k = dict(zip(self._local_names, self._local_k(), strict=True))
        longest = max((int(k.max()) + 1 for k in local_k.values() if k.numel()), default=1)
        (width,) = self.group.max(torch.tensor([longest])).tolist()
        hist = torch.zeros(len(self.shards), width, dtype=torch.int64)
        for j, k in local_k.items():
            hist[j] = torch.bincount(k, minlength=width)
        summed = self.group.sum(hist).numpy()
        names: list[str] = []
        ks: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        for name, row in zip(self.tensor_names, summed, strict=True):
            self._append_hist(names, ks, counts, name, row)
        self._append_hist(names, ks, counts, POOLED, summed.sum(axis=0))
        frame = pd.DataFrame(
            {
                "tensor": pd.Series(names, dtype=object),
                "k": np.concatenate(ks).astype(np.int64),
                "count": np.concatenate(counts).astype(np.int64),
            }
        )
        return frame.sort_values(["tensor", "k"], kind="stable").reset_index(drop=True)

    def _local_k(self) -> list[torch.Tensor]:
        return [] if self.local is None else [k for _, k in self.local._k_per_tensor()]

    def _sizes_and_numels(self) -> tuple[list[int], list[int]]:
        return list(self._n_per_tensor), [shard.numel for shard in self.shards]

    # ----- portable checkpoints -----

    def portable_state(self) -> dict[str, Any]:
        """This rank's state keyed by global flat index (a dict of tensors and ints, for
        ``torch.save``; load with ``weights_only=True``). The per-rank files of one checkpoint,
        together, resume the tracker under any world size (:meth:`load_portable`)."""
        state: dict[str, Any] = {
            **self._state_header(PORTABLE_VERSION),
            "window_crossings": self.local._window_crossings if self.local is not None else 0,
            "tensors": {},
        }
        if self.local is None:
            return state
        local_state = self.local.state_dict()
        sizes, _ = self.local._sizes_and_numels()
        indices = torch.split(local_state["indices"], sizes)
        for m, j in enumerate(self._local_names):
            start = self.shards[j].start
            state["tensors"][self.tensor_names[j]] = {
                "index": indices[m] + start,
                "state": local_state["state"][m].reshape(-1),
                "k": local_state["k"][m].reshape(-1),
                "tau1_index": local_state["tau1_index"][m] + start,
                "tau1_step": local_state["tau1_step"][m],
                "k_overflow_index": local_state["k_overflow_index"][m] + start,
                "k_overflow_value": local_state["k_overflow_value"][m],
                "counts": local_state["counts"][m],
            }
        return state

    def load_portable(self, pieces: Sequence[dict[str, Any]]) -> None:
        """Resume from the ``portable_state`` of every rank of a checkpoint (any number of
        ranks): this rank keeps the scalars of its shards; each tensor's cumulative counts go to
        the rank holding its first tracked scalar."""
        if not pieces:
            raise ValueError("no SignTracker pieces to load")
        self._check_portable(pieces)
        header = pieces[0]
        self.steps = int(header["steps"])
        self._window_steps = int(header["window_steps"])
        owned = self._owns_counts(pieces)
        if self.local is not None:
            self.local.load_state_dict(self._local_state_from(pieces, owned))
            self.local._window_crossings = (
                sum(int(p["window_crossings"]) for p in pieces) if owned.get(-1) else 0
            )
        self._restore_counters({**header, "window_crossings": 0})

    def _check_portable(self, pieces: Sequence[dict[str, Any]]) -> None:
        for piece in pieces:
            if piece.get("version") != PORTABLE_VERSION:
                raise ValueError(f"unsupported sharded SignTracker state {piece.get('version')!r}")
        self._check_same_tracker(pieces[0])

    def _owns_counts(self, pieces: Sequence[dict[str, Any]]) -> dict[int, bool]:
        """Per local tensor j: whether this rank tracks the tensor's first tracked scalar (and
        so carries its counts); key -1: whether this rank carries the window crossings."""
        owned: dict[int, bool] = {-1: False}
        for j, index in zip(self._local_names, self._local_global_indices(), strict=True):
            name = self.tensor_names[j]
            first = min(int(p["tensors"][name]["index"][0]) for p in pieces if name in p["tensors"])
            owned[j] = bool(index.numel()) and int(index[0]) == first
        if self._local_names:
            owned[-1] = owned[self._local_names[0]] and self._local_names[0] == 0
        return owned

    def _local_global_indices(self) -> list[torch.Tensor]:
        if self.local is None:
            return []
        return [
            index + self.shards[j].start
            for j, index in zip(self._local_names, self.local.tracked_indices(), strict=True)
        ]

    def _local_state_from(
        self, pieces: Sequence[dict[str, Any]], owned: dict[int, bool]
    ) -> dict[str, Any]:
        assert self.local is not None
        local = self.local
        state: dict[str, Any] = {**local._state_header(2), "window_crossings": 0}
        state["steps"], state["window_steps"] = self.steps, self._window_steps
        keys = ("state", "k", "tau1_index", "tau1_step", "k_overflow_index", "k_overflow_value")
        for key in keys:
            state[key] = []
        all_counts, all_indices = [], []
        for j, wanted in zip(self._local_names, self._local_global_indices(), strict=True):
            name, start = self.tensor_names[j], self.shards[j].start
            parts = [p["tensors"][name] for p in pieces if name in p["tensors"]]
            merged = _merge_pieces(parts, wanted)
            state["state"].append(merged["state"])
            state["k"].append(merged["k"])
            for key in ("tau1_index", "k_overflow_index"):
                state[key].append(merged[key] - start)
            for key in ("tau1_step", "k_overflow_value"):
                state[key].append(merged[key])
            counts = sum(p["counts"].to(torch.int64) for p in parts)
            all_counts.append(counts if owned[j] else torch.zeros_like(counts))
            all_indices.append(wanted - start)
        state["counts"] = torch.stack(all_counts)
        state["indices"] = torch.cat(all_indices)
        return state


def _merge_pieces(parts: list[dict[str, Any]], wanted: torch.Tensor) -> dict[str, torch.Tensor]:
    """The entries of one tensor's pieces at the global indices ``wanted`` (sorted)."""
    index = torch.cat([p["index"] for p in parts])
    order = torch.argsort(index)
    index = index[order]
    where = torch.searchsorted(index, wanted).clamp(max=index.numel() - 1)
    if not torch.equal(index[where], wanted):
        raise ValueError("the checkpoint's tracker pieces do not cover this rank's shard")
    out = {
        "state": torch.cat([p["state"] for p in parts])[order][where],
        "k": torch.cat([p["k"] for p in parts])[order][where],
    }
    for prefix, value_key in (("tau1", "tau1_step"), ("k_overflow", "k_overflow_value")):
        positions = torch.cat([p[f"{prefix}_index"].to(torch.int64) for p in parts])
        values = torch.cat([p[value_key] for p in parts])
        inside = torch.isin(positions, wanted)
        out[f"{prefix}_index"], out[value_key] = positions[inside], values[inside]
    return out

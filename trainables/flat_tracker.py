"""The sign tracker in the flat layout (checkpoint version 1): per-scalar fp32/int32 buffers.

:class:`FlatSignTracker` is how signlock tracked signs before the lean layout
(:class:`signlock.trainables.tracker.SignTracker`, two bytes per scalar). It keeps, per tracked
scalar, the current and previous weights, the event test's direction and bound, and int32 code,
K, τ1, crossings and band skips (``_sign_kernel.PER_SCALAR_BUFFERS``: 38 bytes on a GPU). It stays
as the second, independent implementation the lean tracker is checked against step by step, and
as the baseline of ``bench/tracker_overhead.py``. Definitions: :mod:`signlock.trainables.tracker`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from signlock.trainables._sign_kernel import (
    SPARSE_BACKENDS,
    Group,
    Segment,
    SparseBackend,
    resident_bytes_per_scalar,
)
from signlock.trainables._tracker_base import (
    TrackerStatistics,
    sample_coordinates,
)
from signlock.trainables.errors import ConfigError

_STATE_VERSION = 1
# state_dict key -> per-scalar Group attribute (code: _sign_kernel.encode(phase, outer sign < 0))
_STATE_FIELDS = {
    "last_value": "cur",
    "init_negative": "init_neg",
    "code": "code",
    "k": "k",
    "tau1": "tau1",
    "crossings": "crossings",
    "band_skips": "band_skips",
}


def _validate_backend(backend: object, named: list[tuple[str, torch.Tensor]]) -> None:
    if backend not in SPARSE_BACKENDS:
        allowed = ", ".join(map(repr, SPARSE_BACKENDS))
        raise ConfigError("tracker.backend", backend, f"one of {allowed}")
    off_cpu = sorted({str(tensor.device) for _, tensor in named if tensor.device.type != "cpu"})
    if backend == "numpy" and off_cpu:
        where = ", ".join(off_cpu)
        raise ConfigError("tracker.backend", backend, f"'auto' or 'torch' (tensors on {where})")


__all__ = ["FlatSignTracker", "resident_bytes_per_scalar"]


class FlatSignTracker(TrackerStatistics):
    """Online tracker of sign lock-in statistics over a fixed list of named tensors.

    Call :meth:`observe` after every optimizer step; the tensors must be updated in place (as
    every ``torch.optim`` optimizer does). Read the statistics at log time with
    :meth:`window_stats`, :meth:`per_tensor_stats`, :meth:`k_histogram` or :meth:`summary`.

    ``backend`` runs the per-step bookkeeping of the few flagged scalars on numpy views
    (CPU tensors only) or in torch; ``"auto"`` picks numpy on CPU and torch elsewhere. Results
    are identical either way; it is not part of the checkpoint.

    ``fused`` runs the dense per-step passes as one compiled kernel (``torch.compile``) instead
    of eager torch ops; ``None`` fuses the groups on CUDA, where the eager passes are bound by
    memory traffic. Results are identical either way; it is not part of the checkpoint.
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, torch.Tensor]],
        *,
        rho: float = 1e-3,
        eps: float = 1e-4,
        sample_per_tensor: int | None = None,
        sample_seed: int = 0,
        backend: SparseBackend = "auto",
        fused: bool | None = None,
    ) -> None:
        named = list(named_params)
        self._start(named, rho, eps, sample_per_tensor, sample_seed)
        _validate_backend(backend, named)
        if fused not in (None, True, False):
            raise ConfigError("tracker.fused", fused, "true, false or null (fused on CUDA)")
        self.fused = fused
        self.backend = backend
        self._segments, self._groups = self._build(named)
        self.n_tracked: int = sum(s.size for s in self._segments)
        with torch.no_grad():
            for group in self._groups:
                group.record_initial()

    def _build(self, named: list[tuple[str, torch.Tensor]]) -> tuple[list[Segment], list[Group]]:
        generator = torch.Generator(device="cpu").manual_seed(self.sample_seed)
        group_of: dict[tuple[torch.device, torch.dtype], int] = {}
        members_of: list[list[Segment]] = []
        segments = []
        for name, tensor in named:
            index = None
            if self.sample_per_tensor is not None:
                index = sample_coordinates(tensor.numel(), self.sample_per_tensor, generator)
                index = index.to(tensor.device)
            g = group_of.setdefault((tensor.device, tensor.dtype), len(members_of))
            if g == len(members_of):
                members_of.append([])
            members = members_of[g]
            start = members[-1].stop if members else 0
            size = tensor.numel() if index is None else index.numel()
            segment = Segment(name, tensor, g, len(members), start, size, index)
            members.append(segment)
            segments.append(segment)
        groups = [
            Group(members, self.rho, self.eps, self.backend, self._fuses(members[0].tensor))
            for members in members_of
        ]
        return segments, groups

    def _fuses(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type == "cuda" if self.fused is None else self.fused

    @torch.no_grad()
    def observe(self) -> None:
        """Record the next observation t = steps + 1 (call after each optimizer step)."""
        self.steps += 1
        crossings = 0
        for group in self._groups:
            crossings += group.observe(self.steps)
        self._window_steps += 1
        self._window_crossings += crossings

    # ----- statistics (log time) -----

    def _per_tensor_counts(self) -> list[dict[str, int]]:
        """Integer counts per tracked tensor, in ``tensor_names`` order."""
        per_group = [group.segment_counts() for group in self._groups]
        keys = ["flips_init", "tau_hits", "k_positive", "k_sum", "crossings", "band_skips"]
        out = []
        for s in self._segments:
            counts = dict(zip(keys, per_group[s.group][s.local], strict=True))
            out.append({"n": s.size, **counts})
        return out

    def window_stats(self) -> dict[str, float]:
        """Pooled ``schema.TRACKER_WINDOW_METRICS``: ``flip_mean`` is cumulative (all crossings
        so far / (N·t)); ``step_flip_rate`` covers the steps since the previous call (resets)."""
        flips = hits = crossings_so_far = 0
        for group in self._groups:
            flips += int(((group.cur < 0) != group.init_neg).sum())
            hits += int((group.tau1 >= 0).sum())
            crossings_so_far += int(group.crossings.sum(dtype=torch.int64))
        n_steps, crossings = self._window_steps, self._window_crossings
        self._window_steps = self._window_crossings = 0
        n = self.n_tracked
        return {
            "flip_vs_init": flips / n,
            "flip_mean": crossings_so_far / (n * self.steps) if self.steps else 0.0,
            "step_flip_rate": crossings / (n * n_steps) if n_steps else 0.0,
            "boundary_hit_fraction": hits / n,
        }

    def _k_per_tensor(self) -> list[tuple[str, torch.Tensor]]:
        return [
            (s.name, self._groups[s.group].k[s.start : s.stop].long().cpu()) for s in self._segments
        ]

    def _flat(self, attr: str) -> torch.Tensor:
        """Per-scalar state ``attr`` concatenated over tensors in ``tensor_names`` order (CPU)."""
        parts = [
            getattr(self._groups[s.group], attr)[s.start : s.stop].cpu() for s in self._segments
        ]
        return torch.cat(parts)

    def k_values(self) -> torch.Tensor:
        """K_T^eff(ρ) of every tracked scalar (int32, CPU, tensors in ``tensor_names`` order)."""
        return self._flat("k")

    def first_hit_times(self) -> torch.Tensor:
        """τ1 of every tracked scalar, −1 where τ1 > T so far (int32, CPU)."""
        return self._flat("tau1")

    def tracked_indices(self) -> list[torch.Tensor]:
        """Per tensor, the flat coordinates tracked (all of them unless sampling; CPU int64)."""
        return [torch.arange(s.size) if s.index is None else s.index.cpu() for s in self._segments]

    def resident_tensors(self) -> list[torch.Tensor]:
        """The tensors this tracker allocated and keeps (views of the weights excluded)."""
        weights = {s.tensor.untyped_storage().data_ptr() for s in self._segments}
        return [
            value
            for part in [*self._groups, *self._segments]
            for name, value in vars(part).items()
            if isinstance(value, torch.Tensor)
            and name not in ("tensor", "_flat")
            and value.untyped_storage().data_ptr() not in weights
        ]

    # ----- checkpointing -----

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: CPU tensors, ints and the list of tensor names (loadable
        with ``torch.load(weights_only=True)``)."""
        with torch.no_grad():
            state: dict[str, Any] = {
                **self._state_header(_STATE_VERSION),
                "indices": torch.cat(self.tracked_indices()).to(torch.int64),
            }
            for key, attr in _STATE_FIELDS.items():
                state[key] = self._flat(attr)
            state["last_value"] = state["last_value"].to(torch.float64)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output into a tracker built over the same named tensors."""
        self._check_compatible(state)
        sizes = [s.size for s in self._segments]
        with torch.no_grad():
            indices = torch.split(state["indices"], sizes)
            for s, index in zip(self._segments, indices, strict=True):
                if s.index is not None:
                    s.index = index.to(device=s.index.device, dtype=torch.int64)
            for key, attr in _STATE_FIELDS.items():
                self._scatter(attr, torch.split(state[key], sizes))
            for group in self._groups:
                group.reset_event_test()
        self._restore_counters(state)

    def _scatter(self, attr: str, parts: tuple[torch.Tensor, ...]) -> None:
        for s, part in zip(self._segments, parts, strict=True):
            target = getattr(self._groups[s.group], attr)
            target[s.start : s.stop] = part.to(device=target.device, dtype=target.dtype)

    def _sizes_and_numels(self) -> tuple[list[int], list[int]]:
        return [s.size for s in self._segments], [s.tensor.numel() for s in self._segments]

    def _check_compatible(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported SignTracker state version {state.get('version')!r}")
        self._check_same_tracker(state)
        for key in _STATE_FIELDS:
            if key not in state or state[key].numel() != self.n_tracked:
                raise ValueError(f"SignTracker state lacks {key!r} for {self.n_tracked} scalars")

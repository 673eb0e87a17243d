"""The sign tracker in the lean layout: two bytes per tracked scalar, weights read in place.

:class:`LeanSignTracker` computes exactly what :class:`signlock.trainables.tracker.SignTracker`
computes (Definitions 3.1/3.2, Theorem 3.6; the same public methods and statistics) but keeps,
per tracked scalar, one state byte and one K byte in tensors shaped like the tracked tensor,
plus host tables sized by the events that happened (τ1 hits, K ≥ 255). The layout is documented
in :mod:`signlock.trainables._lean_kernel`. Its checkpoints (version 2) hold that state per
tensor; checkpoints of the flat layout (version 1) load into it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from signlock.trainables._lean_kernel import (
    HIT,
    INITIAL_NEGATIVE,
    INSIDE_RHO,
    K_SATURATED,
    OUTSIDE_BAND,
    PHASE_SHIFT,
    Lane,
    LeanGroup,
    Tau1Table,
    compute_dtype,
    inward_thresholds,
)
from signlock.trainables.errors import ConfigError
from signlock.trainables.tracker import (
    SignTracker,
    _validate_config,
    _validate_params,
    sample_coordinates,
)

LEAN_STATE_VERSION = 2
FLAT_STATE_VERSION = 1
_PER_TENSOR_STATE = (
    "state",
    "k",
    "tau1_index",
    "tau1_step",
    "k_overflow_index",
    "k_overflow_value",
)


class LeanSignTracker(SignTracker):
    """:class:`SignTracker`'s statistics from two bytes per tracked scalar.

    ``backend``: ``"numpy"`` compares codes and runs the state machine on numpy views (CPU
    tensors only), ``"torch"`` in torch; ``"auto"`` picks numpy on CPU. Results are identical.
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, torch.Tensor]],
        *,
        rho: float = 1e-3,
        eps: float = 1e-4,
        sample_per_tensor: int | None = None,
        sample_seed: int = 0,
        backend: str = "auto",
    ) -> None:
        named = list(named_params)
        _validate_config(rho, eps, sample_per_tensor)
        _validate_params(named)
        if backend not in ("auto", "numpy", "torch"):
            raise ConfigError("tracker.backend", backend, "one of 'auto', 'numpy', 'torch'")
        if backend == "numpy" and any(tensor.device.type != "cpu" for _, tensor in named):
            raise ConfigError("tracker.backend", backend, "'auto' or 'torch' (tensors off CPU)")
        self.fused = False
        self.rho, self.eps = float(rho), float(eps)
        self.sample_per_tensor = sample_per_tensor
        self.sample_seed = sample_seed
        self.backend = backend
        self.tensor_names = [name for name, _ in named]
        self.steps = 0
        self._window_steps = 0
        self._window_crossings = 0
        self._tensor_window_start = 0
        self._tensor_window_crossings: list[int] = []
        self._lanes, self._lean_groups, self._where = self._build_lanes(named)
        self.n_tracked = sum(lane.size for lane in self._lanes)
        with torch.no_grad():
            for group in self._lean_groups:
                group.record_initial()

    def _build_lanes(
        self, named: list[tuple[str, torch.Tensor]]
    ) -> tuple[list[Lane], list[LeanGroup], list[tuple[int, int]]]:
        generator = torch.Generator(device="cpu").manual_seed(self.sample_seed)
        members: dict[tuple[torch.device, torch.dtype], list[Lane]] = {}
        lanes = []
        for name, tensor in named:
            index = None
            if self.sample_per_tensor is not None:
                index = sample_coordinates(tensor.numel(), self.sample_per_tensor, generator)
                index = index.to(tensor.device)
            backend = self._backend_for(tensor)
            compared_in = compute_dtype(tensor.dtype) if backend == "numpy" else tensor.dtype
            eps_d, rho_d = inward_thresholds(self.rho, self.eps, compared_in)
            lane = Lane(name, tensor, index, eps_d, rho_d)
            members.setdefault((tensor.device, compute_dtype(tensor.dtype)), []).append(lane)
            lanes.append(lane)
        groups = [
            LeanGroup(group, self._backend_for(group[0].tensor)) for group in members.values()
        ]
        where = {
            id(lane): (g, i) for g, group in enumerate(groups) for i, lane in enumerate(group.lanes)
        }
        return lanes, groups, [where[id(lane)] for lane in lanes]

    def _offset(self, g: int) -> int:
        return sum(len(group.lanes) for group in self._lean_groups[:g])

    def _tracked_parts(self) -> list[Lane]:
        return self._lanes

    def _backend_for(self, tensor: torch.Tensor) -> str:
        if self.backend == "auto":
            return "numpy" if tensor.device.type == "cpu" else "torch"
        return self.backend

    @torch.no_grad()
    def observe(self) -> None:
        """Record the next observation t = steps + 1 (call after each optimizer step)."""
        self.steps += 1
        crossings = sum(group.observe(self.steps) for group in self._lean_groups)
        self._window_steps += 1
        self._window_crossings += crossings

    # ----- statistics -----

    def _per_tensor_counts(self) -> list[dict[str, int]]:
        out = []
        for lane, (g, i) in zip(self._lanes, self._where, strict=True):
            group = self._lean_groups[g]
            out.append(
                {"n": lane.size, "flips_init": group.flips_vs_init(i), **group.lane_counts(i)}
            )
        return out

    def window_stats(self) -> dict[str, float]:
        counts = self._per_tensor_counts()
        flips = sum(c["flips_init"] for c in counts)
        hits = sum(c["tau_hits"] for c in counts)
        crossings_so_far = sum(c["crossings"] for c in counts)
        n_steps, crossings = self._window_steps, self._window_crossings
        self._window_steps = self._window_crossings = 0
        n = self.n_tracked
        return {
            "flip_vs_init": flips / n,
            "flip_mean": crossings_so_far / (n * self.steps) if self.steps else 0.0,
            "step_flip_rate": crossings / (n * n_steps) if n_steps else 0.0,
            "boundary_hit_fraction": hits / n,
        }

    def _k_per_tensor(self) -> list[torch.Tensor]:
        return [self._lean_groups[g].k_of(i) for g, i in self._where]

    def k_values(self) -> torch.Tensor:
        """K_T^eff(ρ) of every tracked scalar (int64, CPU, tensors in ``tensor_names`` order)."""
        return torch.cat(self._k_per_tensor())

    def first_hit_times(self) -> torch.Tensor:
        return torch.cat([self._lean_groups[g].tau1_of(i) for g, i in self._where])

    def tracked_indices(self) -> list[torch.Tensor]:
        return [
            torch.arange(lane.size) if lane.index is None else lane.index.cpu()
            for lane in self._lanes
        ]

    # ----- checkpointing -----

    def _global_index(self, lane: Lane, positions: np.ndarray) -> torch.Tensor:
        positions_t = torch.from_numpy(positions.astype(np.int64))
        return positions_t if lane.index is None else lane.index.cpu()[positions_t]

    def state_dict(self) -> dict[str, Any]:
        """Resume state (version 2): the per-tensor state/k bytes shaped like the tracked
        tensors, the τ1 and K-overflow tables keyed by global flat index, the counters."""
        state: dict[str, Any] = {
            "version": LEAN_STATE_VERSION,
            "names": list(self.tensor_names),
            "sizes": torch.tensor([lane.size for lane in self._lanes], dtype=torch.int64),
            "numels": torch.tensor([lane.tensor.numel() for lane in self._lanes]),
            "rho": torch.tensor(self.rho, dtype=torch.float64),
            "eps": torch.tensor(self.eps, dtype=torch.float64),
            "steps": self.steps,
            "window_steps": self._window_steps,
            "window_crossings": self._window_crossings,
            "sampled": int(self.sample_per_tensor is not None),
            "indices": torch.cat(self.tracked_indices()).to(torch.int64),
            "counts": torch.cat([torch.from_numpy(group.counts) for group in self._lean_groups])[
                [self._offset(g) + i for g, i in self._where]
            ],
        }
        for key in _PER_TENSOR_STATE:
            state[key] = []
        for lane, (g, i) in zip(self._lanes, self._where, strict=True):
            group = self._lean_groups[g]
            positions, times = group.tau1_table(i)
            overflow = group.overflow_of(i)
            state["state"].append(lane.state.cpu().clone())
            state["k"].append(lane.k.cpu().clone())
            state["tau1_index"].append(self._global_index(lane, positions))
            state["tau1_step"].append(torch.from_numpy(times))
            overflow_positions = np.array(sorted(overflow), dtype=np.int64)
            state["k_overflow_index"].append(self._global_index(lane, overflow_positions))
            state["k_overflow_value"].append(
                torch.tensor([overflow[p] for p in overflow_positions.tolist()], dtype=torch.int64)
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint of this layout (version 2) or of the flat one (version 1)."""
        version = state.get("version")
        if version not in (FLAT_STATE_VERSION, LEAN_STATE_VERSION):
            raise ValueError(f"unsupported SignTracker state version {version!r}")
        self._check_same_tracker(state)
        sizes = [lane.size for lane in self._lanes]
        for lane, index in zip(self._lanes, torch.split(state["indices"], sizes), strict=True):
            if lane.index is not None:
                lane.index = index.to(device=lane.index.device, dtype=torch.int64)
        per_lane = _per_lane_from_flat(state, sizes, self) if version == 1 else _per_lane(state)
        with torch.no_grad():
            for group in self._lean_groups:
                group.tau1, group.k_overflow = Tau1Table(), {}
                group.counts[:] = 0
            for lane, where, parts in zip(self._lanes, self._where, per_lane, strict=True):
                self._restore_lane(lane, *where, parts)
        self.steps = int(state["steps"])
        self._window_steps = int(state["window_steps"])
        self._window_crossings = int(state["window_crossings"])
        self._tensor_window_crossings = [c["crossings"] for c in self._per_tensor_counts()]
        self._tensor_window_start = self.steps

    def _restore_lane(self, lane: Lane, g: int, i: int, parts: dict[str, Any]) -> None:
        group = self._lean_groups[g]
        if parts["state"].numel() != lane.size:
            raise ValueError(f"SignTracker state lacks the state of {lane.name!r}")
        lane.state.copy_(parts["state"].reshape(lane.state.shape).to(lane.state.device))
        lane.k.copy_(parts["k"].reshape(lane.k.shape).to(lane.k.device))
        positions = self._positions(lane, parts["tau1_index"])
        group.tau1.extend(positions + lane.start, parts["tau1_step"].numpy())
        overflow = (self._positions(lane, parts["k_overflow_index"]) + lane.start).tolist()
        group.k_overflow.update(zip(overflow, parts["k_overflow_value"].tolist(), strict=True))
        group.counts[i] = parts["counts"].numpy()

    @staticmethod
    def _positions(lane: Lane, global_index: torch.Tensor) -> np.ndarray:
        index = global_index.to(torch.int64)
        if lane.index is not None:
            index = torch.searchsorted(lane.index.cpu(), index)
        return index.numpy()


def _per_lane(state: dict[str, Any]) -> list[dict[str, Any]]:
    n = len(state["names"])
    for key in _PER_TENSOR_STATE:
        if len(state.get(key, ())) != n:
            raise ValueError(f"SignTracker state lacks {key!r} for {n} tensors")
    return [
        {**{key: state[key][j] for key in _PER_TENSOR_STATE}, "counts": state["counts"][j]}
        for j in range(n)
    ]


_FLAT_FIELDS = ("last_value", "init_negative", "code", "k", "tau1", "crossings", "band_skips")


def _per_lane_from_flat(
    state: dict[str, Any], sizes: list[int], tracker: LeanSignTracker
) -> list[dict[str, Any]]:
    """A flat-layout (version 1) checkpoint as per-tensor lean state. Its per-scalar
    ``code`` is phase + 3·[outer sign < 0]; ``last_value`` the last observation (exact, float64)."""
    n_tracked = sum(sizes)
    for key in _FLAT_FIELDS:
        if key not in state or state[key].numel() != n_tracked:
            raise ValueError(f"SignTracker state lacks {key!r} for {n_tracked} scalars")
    split = {key: torch.split(state[key], sizes) for key in _FLAT_FIELDS}
    out = []
    for j, lane in enumerate(tracker._lanes):
        last = split["last_value"][j].to(torch.float64)
        magnitude = last.abs()
        code = (
            (last < 0).to(torch.uint8)
            | ((magnitude > tracker.eps).to(torch.uint8) * OUTSIDE_BAND)
            | ((magnitude < tracker.rho).to(torch.uint8) * INSIDE_RHO)
        )
        old_code = split["code"][j].to(torch.int64)
        phase, outer_negative = old_code % 3, old_code // 3
        tau1 = split["tau1"][j].to(torch.int64)
        k = split["k"][j].to(torch.int64)
        lean_state = (
            code.to(torch.int64)
            | (phase << PHASE_SHIFT)
            | (outer_negative << 5)
            | (split["init_negative"][j].to(torch.int64) * INITIAL_NEGATIVE)
            | ((tau1 >= 0).to(torch.int64) * HIT)
        ).to(torch.uint8)
        hit = torch.nonzero(tau1 >= 0).view(-1)
        hit = hit[torch.argsort(tau1[hit], stable=True)]
        over = torch.nonzero(k >= K_SATURATED).view(-1)
        index = lane.index.cpu() if lane.index is not None else None
        out.append(
            {
                "state": lean_state,
                "k": k.clamp(max=K_SATURATED).to(torch.uint8),
                "tau1_index": hit if index is None else index[hit],
                "tau1_step": tau1[hit].to(torch.int32),
                "k_overflow_index": over if index is None else index[over],
                "k_overflow_value": k[over],
                "counts": torch.tensor(
                    [
                        int(split["crossings"][j].sum()),
                        int(split["band_skips"][j].sum()),
                        int((tau1 >= 0).sum()),
                        int((k > 0).sum()),
                        int(k.sum()),
                    ]
                ),
            }
        )
    return out

"""Online sign tracker: effective flip counts K_T^eff(ρ), first boundary hits and flip rates.

Definitions (paper Section 3.1, Definitions 3.1/3.2; Theorem 3.6; Section 2.1; Appendix C.4.2):

* ``sign(x) = +1 if x >= 0 else −1`` (so sign(0) = sign(−0.0) = +1, C.5's tie-break).
* Observation times: t = 0 is the weights at construction, then t = 1, 2, … one per
  :meth:`SignTracker.observe` call (made after each optimizer step); ``steps`` is T.
* Stopping times per scalar (Definition 3.2), ρ > ε > 0:
  σ0 = inf{t ≥ 0 : |w_t| ≥ ρ}, τ_k = inf{t > σ_{k−1} : |w_t| ≤ ε}, σ_k = inf{t > τ_k : |w_t| ≥ ρ}.
* K_T^eff(ρ) = Σ_{k≥1} 1[σ_k ≤ T, sign(w_{σ_k}) ≠ sign(w_{σ_{k−1}})] (Theorem 3.6).
* ĥ_direct = fraction of scalars with τ1 ≤ T; (ĥ, ĝ) is the zero-inflated geometric MLE of K
  (C.4.2, :mod:`signlock.trainables.lockin_stats`).
* flip vs init (Section 2.1 / C.3.6): fraction with sign(w(t)) ≠ sign(w(0)).
* flip_mean (C.4.2) = (1/T) Σ_{t<T} (1/N) Σ_i 1{sign(w_i(t+1)) ≠ sign(w_i(t))}
  = total zero crossings / (N·T).
* A zero crossing t → t+1 is *band-skipping* when |w_t| > ε and |w_{t+1}| > ε: it jumped over
  Bd(ε) in one step, which Assumption 3.3 rules out.

Implementation: two bytes per tracked scalar (a state byte and a K byte, in tensors shaped like
each tracked tensor) plus host tables sized by the events that happened; the layout, the
dense pass that compares each weight in place with its stored code, and the exact state machine
on the scalars whose code changed live in :mod:`signlock.trainables._lean_kernel`. This module
holds the public API and the checkpoint format (version 2; version-1 checkpoints of the flat
layout, :mod:`signlock.trainables.flat_tracker`, load too).

``flips.parquet`` schema (rows of :meth:`SignTracker.k_histogram`, sorted by tensor then k):

=======  =======  ==============================================================
column   dtype    meaning
=======  =======  ==============================================================
tensor   string   tracked tensor name, or ``"__pooled__"`` for the sum over tensors
k        int64    a value of K_T^eff(ρ) taken by at least one tracked scalar
count    int64    number of tracked scalars of that tensor with K_T^eff(ρ) = k
=======  =======  ==============================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from signlock.trainables import _native_flag as native_flag
from signlock.trainables._lean_kernel import (
    CODE_CHUNK,
    DENSE_BYTES_PER_SCALAR,
    HIT,
    INITIAL_NEGATIVE,
    INSIDE_RHO,
    K_OVERFLOW_ENTRY_BYTES,
    K_SATURATED,
    OUTSIDE_BAND,
    PACKED_CHUNK,
    PHASE_SHIFT,
    TAU1_ENTRY_BYTES,
    Lane,
    LeanGroup,
    Tau1Table,
    compute_dtype,
    inward_thresholds,
)
from signlock.trainables._tracker_base import (
    POOLED,
    TrackerStatistics,
    sample_coordinates,
)
from signlock.trainables.errors import ConfigError

# The memory planner's view of the layout (search_spaces/memory.py): bytes per tracked scalar
# and per host-table entry, and how many scalars one dense comparison or numpy pass takes.
__all__ = [
    "CODE_CHUNK",
    "DENSE_BYTES_PER_SCALAR",
    "K_OVERFLOW_ENTRY_BYTES",
    "PACKED_CHUNK",
    "POOLED",
    "TAU1_ENTRY_BYTES",
    "SignTracker",
    "compute_dtype",
    "cpu_backend",
    "sample_coordinates",
]

BACKENDS = ("auto", "native", "numpy", "torch")
CPU_BACKENDS = ("native", "numpy")
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


def cpu_backend() -> str:
    """What ``backend="auto"`` runs on CPU tensors: the compiled dense pass where a C compiler
    works, else numpy."""
    return "native" if native_flag.load() is not None else "numpy"


class SignTracker(TrackerStatistics):
    """Online tracker of sign lock-in statistics over a fixed list of named tensors.

    Call :meth:`observe` after every optimizer step; the tensors must be updated in place (as
    every ``torch.optim`` optimizer does). Read the statistics at log time with
    :meth:`window_stats`, :meth:`per_tensor_stats`, :meth:`k_histogram` or :meth:`summary`.

    ``backend``: ``"numpy"`` compares codes and runs the state machine on numpy views (CPU
    tensors only), ``"native"`` the same with the dense comparison compiled (needs a C
    compiler), ``"torch"`` in torch; ``"auto"`` picks native on CPU where it compiles, else
    numpy. Results are identical either way; it is not part of the checkpoint.

    ``indices``: with ``sample_per_tensor``, the sorted flat coordinates to track in each
    tensor instead of drawing them (a shard's part of the global draw,
    :mod:`signlock.trainables.sharded_tracker`).
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
        indices: list[torch.Tensor] | None = None,
    ) -> None:
        named = list(named_params)
        self._start(named, rho, eps, sample_per_tensor, sample_seed)
        if indices is not None and (sample_per_tensor is None or len(indices) != len(named)):
            allowed = "one index tensor per sampled tensor"
            raise ConfigError("tracker.indices", len(indices), allowed)
        self._given_indices = indices
        if backend not in BACKENDS:
            raise ConfigError("tracker.backend", backend, f"one of {', '.join(BACKENDS)}")
        if backend in CPU_BACKENDS and any(tensor.device.type != "cpu" for _, tensor in named):
            raise ConfigError("tracker.backend", backend, "'auto' or 'torch' (tensors off CPU)")
        self.backend = backend
        self._lanes, self._groups, self._where = self._build_lanes(named)
        self.n_tracked = sum(lane.size for lane in self._lanes)
        with torch.no_grad():
            for group in self._groups:
                group.record_initial()

    def _build_lanes(
        self, named: list[tuple[str, torch.Tensor]]
    ) -> tuple[list[Lane], list[LeanGroup], list[tuple[int, int]]]:
        generator = torch.Generator(device="cpu").manual_seed(self.sample_seed)
        members: dict[tuple[torch.device, torch.dtype], list[Lane]] = {}
        lanes = []
        for j, (name, tensor) in enumerate(named):
            index = None
            if self._given_indices is not None:
                index = self._given_indices[j].to(device=tensor.device, dtype=torch.int64)
            elif self.sample_per_tensor is not None:
                index = sample_coordinates(tensor.numel(), self.sample_per_tensor, generator)
                index = index.to(tensor.device)
            backend = self._backend_for(tensor)
            compared_in = tensor.dtype if backend == "torch" else compute_dtype(tensor.dtype)
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
        return sum(len(group.lanes) for group in self._groups[:g])

    def _backend_for(self, tensor: torch.Tensor) -> str:
        if self.backend != "auto":
            return self.backend
        return cpu_backend() if tensor.device.type == "cpu" else "torch"

    @torch.no_grad()
    def observe(self) -> None:
        """Record the next observation t = steps + 1 (call after each optimizer step)."""
        self.steps += 1
        crossings = sum(group.observe(self.steps) for group in self._groups)
        self._window_steps += 1
        self._window_crossings += crossings

    # ----- statistics -----

    def _per_tensor_counts(self) -> list[dict[str, int]]:
        out = []
        for lane, (g, i) in zip(self._lanes, self._where, strict=True):
            group = self._groups[g]
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

    def _k_per_lane(self) -> list[torch.Tensor]:
        return [self._groups[g].k_of(i) for g, i in self._where]

    def _k_per_tensor(self) -> list[tuple[str, torch.Tensor]]:
        return [(lane.name, k) for lane, k in zip(self._lanes, self._k_per_lane(), strict=True)]

    def k_values(self) -> torch.Tensor:
        """K_T^eff(ρ) of every tracked scalar (int64, CPU, tensors in ``tensor_names`` order)."""
        return torch.cat(self._k_per_lane())

    def first_hit_times(self) -> torch.Tensor:
        return torch.cat([self._groups[g].tau1_of(i) for g, i in self._where])

    def tracked_indices(self) -> list[torch.Tensor]:
        return [
            torch.arange(lane.size) if lane.index is None else lane.index.cpu()
            for lane in self._lanes
        ]

    def resident_tensors(self) -> list[torch.Tensor]:
        """The tensors this tracker allocated and keeps (state and K bytes, scratch, sampled
        indices); its host tables are not tensors (``host_table_bytes``)."""
        return [tensor for group in self._groups for tensor in group.resident_tensors()]

    def host_table_bytes(self) -> int:
        """Bytes of the host tables as they stand: τ1 entries and K ≥ 255 overflows."""
        return sum(group.host_table_bytes() for group in self._groups)

    # ----- checkpointing -----

    def _global_index(self, lane: Lane, positions: np.ndarray) -> torch.Tensor:
        positions_t = torch.from_numpy(positions.astype(np.int64))
        return positions_t if lane.index is None else lane.index.cpu()[positions_t]

    def state_dict(self) -> dict[str, Any]:
        """Resume state (version 2): the per-tensor state/k bytes shaped like the tracked
        tensors, the τ1 and K-overflow tables keyed by global flat index, the counters."""
        state: dict[str, Any] = {
            **self._state_header(LEAN_STATE_VERSION),
            "indices": torch.cat(self.tracked_indices()).to(torch.int64),
            "counts": torch.cat([torch.from_numpy(group.counts) for group in self._groups])[
                [self._offset(g) + i for g, i in self._where]
            ],
        }
        for key in _PER_TENSOR_STATE:
            state[key] = []
        for lane, (g, i) in zip(self._lanes, self._where, strict=True):
            group = self._groups[g]
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
            for group in self._groups:
                group.tau1 = [Tau1Table(lane.size) for lane in group.lanes]
                group.k_overflow = {}
                group.counts[:] = 0
            for lane, where, parts in zip(self._lanes, self._where, per_lane, strict=True):
                self._restore_lane(lane, *where, parts)
        self._restore_counters(state)

    def _restore_lane(self, lane: Lane, g: int, i: int, parts: dict[str, Any]) -> None:
        group = self._groups[g]
        if parts["state"].numel() != lane.size:
            raise ValueError(f"SignTracker state lacks the state of {lane.name!r}")
        lane.state.copy_(parts["state"].reshape(lane.state.shape).to(lane.state.device))
        lane.k.copy_(parts["k"].reshape(lane.k.shape).to(lane.k.device))
        positions = self._positions(lane, parts["tau1_index"])
        group.tau1[i].extend(positions, parts["tau1_step"].numpy())
        overflow = (self._positions(lane, parts["k_overflow_index"]) + lane.start).tolist()
        group.k_overflow.update(zip(overflow, parts["k_overflow_value"].tolist(), strict=True))
        group.counts[i] = parts["counts"].numpy()

    @staticmethod
    def _positions(lane: Lane, global_index: torch.Tensor) -> np.ndarray:
        index = global_index.to(torch.int64)
        if lane.index is not None:
            index = torch.searchsorted(lane.index.cpu(), index)
        return index.numpy()

    def _sizes_and_numels(self) -> tuple[list[int], list[int]]:
        return [lane.size for lane in self._lanes], [lane.tensor.numel() for lane in self._lanes]


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
    state: dict[str, Any], sizes: list[int], tracker: SignTracker
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

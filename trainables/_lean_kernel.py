"""Lean bit-level kernel of :class:`signlock.trainables.lean_tracker.LeanSignTracker` (private).

The stopping times are those of Definition 3.2 (paper Section 3.1; see
:mod:`signlock.trainables.tracker`). Per tracked scalar this kernel keeps **two bytes** in
tensors shaped like the tracked tensor (its dim 0 is the parameter's dim 0, so a ``Shard(0)``
slice of a parameter slices its state the same way), plus sparse tables on the host sized by the
events that happened.

Layout, per tracked tensor (``Lane``; ``[x]`` is 1 when x holds):

============  =====  ==========================================================================
field         dtype  meaning
============  =====  ==========================================================================
state         uint8  bits 0-2 the *code* of the last observation w: bit 0 [w < 0], bit 1 [|w|
                     > ε], bit 2 [|w| < ρ] (NaN: 0); bits 3-4 the :class:`Phase`; bit 5
                     [sign(w_{σ_{k−1}}) < 0], the outer sign K compares against; bit 6 [w_0 < 0];
                     bit 7 [τ1 ≤ t]
k             uint8  min(K, 255); where it reads 255, K is ``k_overflow[position]``
k_overflow    host   position → K for the scalars with K ≥ 255 (Python ints: never overflows)
tau1          host   (position, τ1) of every scalar that has hit the band, in time order
counters      host   per tensor: zero crossings, band-skipping ones, τ1 hits, #{K>0}, ΣK
============  =====  ==========================================================================

A *position* is the scalar's flat index in its tracked tensor (the parameter's flat index unless
sampling, where it indexes the sampled coordinates); checkpoints store global flat indices.

Why two bytes suffice: an event of Definition 3.2 at step t needs |w_t| ≤ ε (τ) or |w_t| ≥ ρ
(σ), and after every processed observation the state is settled (a scalar waiting for τ is not
in the band, one waiting for σ is not outside ρ). So an event, a zero crossing or a band-skipping
crossing all change the code, and a step that leaves a scalar's code unchanged leaves its whole
state unchanged. The dense pass therefore only compares each weight's code, read in place, with
the stored one; the exact state machine runs on the (usually few) scalars whose code changed.

Thresholds are rounded inward to the dtype the comparison runs in (:func:`inward_thresholds`),
so |w| ≤ ε, |w| > ε, |w| < ρ are exact for every stored value, bf16 and fp16 included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

import numpy as np
import torch

Backend = Literal["numpy", "torch"]

NEGATIVE, OUTSIDE_BAND, INSIDE_RHO = 1, 2, 4  # the code bits of one observation
CODE_BITS = 0b111
PHASE_SHIFT = 3
OUTER_NEGATIVE = 1 << 5
INITIAL_NEGATIVE = 1 << 6
HIT = 1 << 7
K_SATURATED = 255

# Resident bytes per tracked scalar (the planner's table): dense bytes on the tensor's device,
# and host bytes per event-sized table entry.
DENSE_BYTES_PER_SCALAR = 2  # state + k
TAU1_ENTRY_BYTES = 12  # int64 position + int32 τ1, per scalar that has hit the band
K_OVERFLOW_ENTRY_BYTES = 100  # a Python dict entry (int → int), per scalar with K ≥ 255
CODE_CHUNK = 1 << 20  # scalars per dense comparison: bounds its temporaries


class Phase(IntEnum):
    """Which stopping time of Definition 3.2 a scalar waits for."""

    AWAIT_SIGMA0 = 0  # no |w_t| ≥ ρ yet
    AWAIT_TAU = 1  # outside Bd(ε) since σ_{k−1}: waits for |w_t| ≤ ε
    AWAIT_SIGMA = 2  # entered Bd(ε) at τ_k: waits for |w_t| ≥ ρ


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _step_toward(value: torch.Tensor, up: bool) -> torch.Tensor:
    """The next representable positive value of ``value``'s dtype above (or below) it."""
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[value.element_size()]
    return (value.view(bits) + (1 if up else -1)).view(value.dtype)


def inward_thresholds(rho: float, eps: float, dtype: torch.dtype) -> tuple[float, float]:
    """(ε, ρ) rounded inward to ``dtype``: for every w of that dtype |w| ≤ ε ⇔ |w| ≤ eps_d and
    |w| ≥ ρ ⇔ |w| ≥ rho_d (ρ beyond the dtype's range becomes inf)."""
    eps_d = torch.tensor(eps, dtype=torch.float64).to(dtype)
    if float(eps_d) > eps:
        eps_d = _step_toward(eps_d, up=False)
    rho_d = torch.tensor(rho, dtype=torch.float64).to(dtype)
    if float(rho_d) < rho:
        rho_d = _step_toward(rho_d, up=True)
    return float(eps_d), float(rho_d)


def codes_numpy(x: np.ndarray, eps: float, rho: float) -> np.ndarray:
    """The observation code of each value (module docstring), as uint8."""
    a = np.abs(x)
    code = (x < 0).view(np.uint8).copy()
    code |= (a > eps).view(np.uint8) << 1
    code |= (a < rho).view(np.uint8) << 2
    return code


def codes_torch(x: torch.Tensor, eps: float, rho: float) -> torch.Tensor:
    a = x.abs()
    code = (x < 0).to(torch.uint8)
    code |= (a > eps).to(torch.uint8) << 1
    code |= (a < rho).to(torch.uint8) << 2
    return code


def initial_state(code: Any) -> Any:
    """State bytes of observation 0: σ0 = 0 where |w_0| ≥ ρ (then waiting for τ1 with outer sign
    sign(w_0)), else waiting for σ0; the initial sign kept."""
    negative = code & NEGATIVE
    outer = (code & (OUTSIDE_BAND | INSIDE_RHO)) == OUTSIDE_BAND
    phase = outer * int(Phase.AWAIT_TAU)
    return code | (phase << PHASE_SHIFT) | (negative * outer << 5) | (negative << 6)


@dataclass
class Lane:
    """One tracked tensor: its values (read in place) and its slice [start, start + size) of
    its group's state and k bytes, viewed in the tracked tensor's shape."""

    name: str
    tensor: torch.Tensor
    index: torch.Tensor | None  # sampled flat coordinates, or None for every scalar
    eps: float  # thresholds in the dtype the dense comparison runs in
    rho: float
    start: int = 0
    state: torch.Tensor = field(init=False)
    k: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self._ptr = self.tensor.data_ptr()
        detached = self.tensor.detach()
        self._flat = detached.view(-1) if detached.is_contiguous() else None

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape if self.index is None else self.index.shape

    @property
    def size(self) -> int:
        return self.tensor.numel() if self.index is None else self.index.numel()

    @property
    def stop(self) -> int:
        return self.start + self.size

    def values(self) -> torch.Tensor:
        """The tracked values, flat, in the tensor's own dtype (a view unless sampled or
        non-contiguous)."""
        if self.tensor.data_ptr() != self._ptr:
            raise RuntimeError(
                f"tracked tensor {self.name!r} was replaced instead of updated in place; "
                "build a new SignTracker (and load_state_dict) after moving or recasting a model"
            )
        flat = self._flat if self._flat is not None else self.tensor.detach().reshape(-1)
        return flat if self.index is None else flat.index_select(0, self.index)


COUNT_KEYS = ("crossings", "band_skips", "tau_hits", "k_positive", "k_sum")


@dataclass
class Tau1Table:
    """(position, τ1) pairs on the host, appended step by step, compacted now and then."""

    positions: list[np.ndarray] = field(default_factory=list)
    times: list[np.ndarray] = field(default_factory=list)

    def append(self, positions: np.ndarray, t: int) -> None:
        self.positions.append(positions.astype(np.int64))
        self.times.append(np.full(positions.size, t, dtype=np.int32))
        if len(self.positions) > 64:
            self.positions, self.times = [self.all_positions()], [self.all_times()]

    def extend(self, positions: np.ndarray, times: np.ndarray) -> None:
        self.positions.append(positions.astype(np.int64))
        self.times.append(times.astype(np.int32))

    def all_positions(self) -> np.ndarray:
        return np.concatenate(self.positions) if self.positions else np.zeros(0, np.int64)

    def all_times(self) -> np.ndarray:
        return np.concatenate(self.times) if self.times else np.zeros(0, np.int32)


class CodeScratch:
    """Preallocated numpy buffers for the dense code comparison of up to ``size`` scalars."""

    def __init__(self, size: int, dtype: np.dtype) -> None:
        self.magnitude = np.empty(size, dtype)
        self.test = np.empty(size, np.bool_)
        self.code = np.zeros(-(-size // 8) * 8, np.uint8)  # whole uint64 words
        self.bit = np.empty(size, np.uint8)
        self.lanes = np.arange(8)

    def changed(self, x: np.ndarray, stored: np.ndarray, eps: float, rho: float) -> np.ndarray:
        """Indices where the code of ``x`` differs from the code bits of ``stored``."""
        n = x.size
        magnitude, test, code, bit = (
            b[:n] for b in (self.magnitude, self.test, self.code, self.bit)
        )
        np.abs(x, out=magnitude)
        np.less(x, 0, out=code.view(np.bool_))
        np.greater(magnitude, eps, out=test)
        np.left_shift(test.view(np.uint8), 1, out=bit)
        code |= bit
        np.less(magnitude, rho, out=test)
        np.left_shift(test.view(np.uint8), 2, out=bit)
        code |= bit
        code ^= stored
        code &= CODE_BITS
        padded = -(-n // 8) * 8
        self.code[n:padded] = 0
        words = np.flatnonzero(self.code[:padded].view(np.uint64))  # 8 scalars per test
        if not words.size:
            return words
        candidates = (words[:, None] * 8 + self.lanes).reshape(-1)
        return candidates[self.code[candidates] != 0]


class LeanGroup:
    """The lanes of one device and compute dtype: one flat state and k buffer (each lane a
    view of its slice) and one sparse pass per step over the scalars flagged in any lane.

    ``backend="numpy"`` (CPU) compares codes and runs the state machine on numpy views of the
    same memory; ``"torch"`` does it in torch (any device).
    """

    def __init__(self, lanes: list[Lane], backend: Backend) -> None:
        self.lanes = lanes
        self.backend = backend
        self.xp: Any = np if backend == "numpy" else torch
        self.device = lanes[0].tensor.device
        self.dtype = compute_dtype(lanes[0].tensor.dtype)
        start = 0
        for lane in lanes:
            lane.start, start = start, start + lane.size
        self.n = start
        self.state = torch.zeros(self.n, dtype=torch.uint8, device=self.device)
        self.k = torch.zeros(self.n, dtype=torch.uint8, device=self.device)
        for lane in lanes:
            lane.state = self.state[lane.start : lane.stop].view(lane.shape)
            lane.k = self.k[lane.start : lane.stop].view(lane.shape)
        self.starts = np.array([lane.start for lane in lanes], dtype=np.int64)
        self.counts = np.zeros((len(lanes), len(COUNT_KEYS)), dtype=np.int64)
        self.tau1 = Tau1Table()  # group positions
        self.k_overflow: dict[int, int] = {}  # group position -> K
        if backend == "numpy":
            self._state, self._k = self.state.numpy(), self.k.numpy()
            chunk = min(max(lane.size for lane in lanes), CODE_CHUNK)
            self._scratch = CodeScratch(chunk, np.dtype(str(self.dtype).removeprefix("torch.")))
        else:
            self._state, self._k = self.state, self.k

    # ----- dense pass -----

    def _as_compared(self, values: torch.Tensor) -> Any:
        if self.backend == "torch":
            return values
        return (values if values.dtype == self.dtype else values.to(self.dtype)).numpy()

    def _codes(self, lane: Lane, values: torch.Tensor) -> Any:
        x = self._as_compared(values)
        return (codes_numpy if self.backend == "numpy" else codes_torch)(x, lane.eps, lane.rho)

    def record_initial(self) -> None:
        for lane in self.lanes:
            state = initial_state(self._codes(lane, lane.values()))
            lane.state.view(-1).copy_(torch.as_tensor(state, device=self.device))

    def observe(self, t: int) -> int:
        """Record observation t ≥ 1; returns the number of zero crossings t−1 → t."""
        positions, codes = [], []
        for lane in self.lanes:
            values = lane.values()
            for start in range(0, lane.size, CODE_CHUNK):
                offset = lane.start + start
                x = self._as_compared(values[start : start + CODE_CHUNK])
                stored = self._state[offset : offset + len(x)]
                if self.backend == "numpy":
                    changed = self._scratch.changed(x, stored, lane.eps, lane.rho)
                    if changed.size:
                        positions.append(changed + offset)
                        codes.append(codes_numpy(x[changed], lane.eps, lane.rho))
                else:
                    code = codes_torch(x, lane.eps, lane.rho)
                    changed = torch.nonzero((code ^ stored) & CODE_BITS).view(-1)
                    positions.append(changed + offset)
                    codes.append(code[changed])
        if not positions:
            return 0
        cat = np.concatenate if self.backend == "numpy" else torch.cat
        flagged = cat(positions)
        if not len(flagged):
            return 0
        return self._process(flagged, cat(codes), t)

    # ----- sparse pass: the exact state machine on the scalars whose code changed -----

    def _lane_counts(self, positions: Any, mask: Any) -> np.ndarray:
        """Per lane, how many of ``positions[mask]`` fall in it."""
        chosen = _host(positions[mask])
        lanes = np.searchsorted(self.starts, chosen, side="right") - 1
        return np.bincount(lanes, minlength=len(self.lanes))

    def _process(self, positions: Any, code: Any, t: int) -> int:
        step = transition(self._state[positions], code, self.xp)
        self._state[positions] = step["state"]
        crossings = int(step["crossed"].sum())
        if crossings:
            self.counts[:, 0] += self._lane_counts(positions, step["crossed"])
            self.counts[:, 1] += self._lane_counts(positions, step["skip"])
        hits = positions[step["new_hit"]]
        if len(hits):
            self.counts[:, 2] += self._lane_counts(positions, step["new_hit"])
            self.tau1.append(_host(hits), t)
        if bool(step["k_inc"].any()):
            self._increment_k(positions, step["k_inc"])
        return crossings

    def _increment_k(self, flagged: Any, k_inc: Any) -> None:
        positions = flagged[k_inc]
        k = self._k[positions]
        self.counts[:, 3] += self._lane_counts(positions, k == 0)
        self.counts[:, 4] += self._lane_counts(flagged, k_inc)
        below = k < K_SATURATED
        self._k[positions[below]] = k[below] + 1
        at_top = k >= K_SATURATED - 1
        if bool(at_top.any()):
            tops = zip(_host(positions[at_top]).tolist(), _host(k[at_top]).tolist(), strict=True)
            for position, before in tops:
                self.k_overflow[position] = self.k_overflow.get(position, before) + 1

    # ----- reading the state -----

    def k_of(self, i: int) -> torch.Tensor:
        """K of every scalar of lane ``i`` (int64, CPU)."""
        lane = self.lanes[i]
        k = lane.k.reshape(-1).cpu().to(torch.int64)
        for position, value in self.k_overflow.items():
            if lane.start <= position < lane.stop:
                k[position - lane.start] = value
        return k

    def tau1_table(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions in lane ``i``, τ1) of its scalars that have hit the band, in time order."""
        lane = self.lanes[i]
        positions, times = self.tau1.all_positions(), self.tau1.all_times()
        inside = (positions >= lane.start) & (positions < lane.stop)
        return positions[inside] - lane.start, times[inside]

    def tau1_of(self, i: int) -> torch.Tensor:
        """τ1 of every scalar of lane ``i``, −1 where it has not happened (int32, CPU)."""
        tau1 = torch.full((self.lanes[i].size,), -1, dtype=torch.int32)
        positions, times = self.tau1_table(i)
        tau1[torch.from_numpy(positions)] = torch.from_numpy(times)
        return tau1

    def overflow_of(self, i: int) -> dict[int, int]:
        lane = self.lanes[i]
        return {
            p - lane.start: k for p, k in self.k_overflow.items() if lane.start <= p < lane.stop
        }

    def lane_counts(self, i: int) -> dict[str, int]:
        return dict(zip(COUNT_KEYS, self.counts[i].tolist(), strict=True))

    def flips_vs_init(self, i: int) -> int:
        state = self.lanes[i].state
        return int((((state >> 6) ^ state) & 1).sum())


def _host(values: Any) -> np.ndarray:
    return values.cpu().numpy() if isinstance(values, torch.Tensor) else values


def _uint8(values: Any, xp: Any) -> Any:
    return values.astype(np.uint8) if xp is np else values.to(torch.uint8)


def transition(state: Any, code: Any, xp: Any) -> dict[str, Any]:
    """Definition 3.2's state machine for scalars whose stored ``state`` meets the new ``code``
    (numpy arrays or torch tensors alike): the next state bytes and what happened."""
    last = state & CODE_BITS
    crossed = ((code ^ last) & NEGATIVE) != 0
    skip = crossed & ((last & OUTSIDE_BAND) != 0) & ((code & OUTSIDE_BAND) != 0)
    phase = (state >> PHASE_SHIFT) & 3
    at_tau = phase == int(Phase.AWAIT_TAU)
    region = code & (OUTSIDE_BAND | INSIDE_RHO)
    event = xp.where(at_tau, region == INSIDE_RHO, region == OUTSIDE_BAND)
    negative = code & NEGATIVE
    outer_negative = (state >> 5) & 1
    sigma = event & ~at_tau  # σ0 or σ_k: outside again, with the current sign
    k_inc = sigma & (phase == int(Phase.AWAIT_SIGMA)) & (negative != outer_negative)
    tau = event & at_tau  # τ_k: in the band, outer sign kept
    new_phase = xp.where(
        event, xp.where(at_tau, int(Phase.AWAIT_SIGMA), int(Phase.AWAIT_TAU)), phase
    )
    new_outer = xp.where(sigma, negative, outer_negative)
    new_state = (
        code
        | (_uint8(new_phase, xp) << PHASE_SHIFT)
        | (_uint8(new_outer, xp) << 5)
        | (state & (INITIAL_NEGATIVE | HIT))
        | (_uint8(tau, xp) << 7)
    )
    return {
        "state": _uint8(new_state, xp),
        "crossed": crossed,
        "skip": skip,
        "new_hit": tau & ((state & HIT) == 0),
        "k_inc": k_inc,
    }

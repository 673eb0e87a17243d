"""Lean bit-level kernel of :class:`signlock.trainables.tracker.SignTracker` (private).

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
tau1          host   the position of every scalar that has hit the band, in time order, and
                     the steps as runs (t, count)
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

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

import numpy as np
import torch

from signlock.trainables import _native_flag as native_flag
from signlock.trainables._native_flag import NativeFlagger

Backend = Literal["native", "numpy", "torch"]

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
TAU1_ENTRY_BYTES = 4  # int32 position, per scalar that has hit the band (τ1 kept as runs)
RUN_BYTES = 16  # one (t, count) run per tensor and step with τ1 hits
K_OVERFLOW_ENTRY_BYTES = 100  # a Python dict entry (int → int), per scalar with K ≥ 255
CODE_CHUNK = 1 << 20  # scalars per dense comparison in torch: bounds its temporaries
PACKED_CHUNK = 1 << 16  # scalars per dense comparison in numpy: an L2-sized scratch
SPARSE_CHUNK = 1 << 14  # scalars per numpy state-machine pass (up to twice that)


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


def changed_codes(x: torch.Tensor, stored: torch.Tensor, eps: float, rho: float) -> torch.Tensor:
    """The code bits in which each value's code differs from its stored state (0: unchanged)."""
    return (codes_torch(x, eps, rho) ^ stored) & CODE_BITS


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

    @property
    def contiguous(self) -> bool:
        return self._flat is not None

    def check_in_place(self) -> None:
        if self.tensor.data_ptr() != self._ptr:
            raise RuntimeError(
                f"tracked tensor {self.name!r} was replaced instead of updated in place; "
                "build a new SignTracker (and load_state_dict) after moving or recasting a model"
            )

    def values(self) -> torch.Tensor:
        """The tracked values, flat, in the tensor's own dtype (a view unless sampled or
        non-contiguous)."""
        self.check_in_place()
        flat = self._flat if self._flat is not None else self.tensor.detach().reshape(-1)
        return flat if self.index is None else flat.index_select(0, self.index)


COUNT_KEYS = ("crossings", "band_skips", "tau_hits", "k_positive", "k_sum")


class Tau1Table:
    """One tensor's τ1 hits on the host: their positions (int32, or int64 for tensors of 2³¹
    scalars or more) in the order they happened, and the steps as runs (t, how many)."""

    def __init__(self, size: int) -> None:
        self.dtype = np.int32 if size < 2**31 else np.int64
        self.positions: list[np.ndarray] = []
        self.runs: list[tuple[int, int]] = []

    def append(self, positions: np.ndarray, t: int) -> None:
        self.positions.append(positions.astype(self.dtype))
        if self.runs and self.runs[-1][0] == t:  # the same step, from another pass
            self.runs[-1] = (t, self.runs[-1][1] + positions.size)
        else:
            self.runs.append((t, positions.size))
        if len(self.positions) > 64:
            self.positions = [self.all_positions()]

    def extend(self, positions: np.ndarray, times: np.ndarray) -> None:
        """Hits in any order (a checkpoint's): stored sorted by time, stably."""
        order = np.argsort(times, kind="stable")
        positions, times = positions[order], times[order]
        steps, counts = np.unique(times, return_counts=True)
        self.positions.append(positions.astype(self.dtype))
        self.runs.extend(zip(steps.tolist(), counts.tolist(), strict=True))

    def all_positions(self) -> np.ndarray:
        return np.concatenate(self.positions) if self.positions else np.zeros(0, self.dtype)

    def all_times(self) -> np.ndarray:
        steps = np.array([t for t, _ in self.runs], dtype=np.int32)
        return np.repeat(steps, [n for _, n in self.runs])

    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.positions) + len(self.runs) * RUN_BYTES


class CodeScratch:
    """Preallocated numpy buffers for the dense code comparison of up to ``size`` scalars."""

    def __init__(self, size: int, dtype: torch.dtype) -> None:
        # torch-allocated (numpy views of them), so torch's allocation trackers see them
        self.buffers = [
            torch.empty(size, dtype=dtype),
            torch.empty(size, dtype=torch.bool),
            torch.zeros(-(-size // 8) * 8, dtype=torch.uint8),  # whole uint64 words
            torch.empty(size, dtype=torch.uint8),
        ]
        self.magnitude, self.test, self.code, self.bit = (b.numpy() for b in self.buffers)
        self.lanes = np.arange(8)

    def changed(self, x: np.ndarray, stored: np.ndarray, eps: float, rho: float) -> np.ndarray:
        """The 8-scalar words in which the code of ``x`` differs from the code bits of
        ``stored`` somewhere (see :meth:`flagged`)."""
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
        return np.flatnonzero(self.code[:padded].view(np.uint64))  # 8 scalars per test

    def flagged(self, words: np.ndarray) -> np.ndarray:
        """The scalars flagged in ``words`` (indices of nonzero words of the last ``changed``)."""
        candidates = (words[:, None] * 8 + self.lanes).reshape(-1)
        return candidates[self.code[candidates] != 0]


@dataclass
class Chunk:
    """Up to ``PACKED_CHUNK`` consecutive scalars of a group, from ``offset``: either a view of
    one tensor's memory (``in_place``) or ``pieces`` (lane, start, stop, at) to pack."""

    offset: int
    size: int
    in_place: np.ndarray | None
    pieces: list[tuple[Lane, int, int, int]]


def plan_chunks(
    lanes: list[Lane], dtype: torch.dtype, size: int, *, small_in_place: bool = False
) -> list[Chunk]:
    """Cut the group's scalars into chunks of at most ``size``: a whole chunk inside one
    contiguous, unsampled tensor of ``dtype`` is read where it lies (with ``small_in_place``
    also a shorter one: a tensor's tail or a small tensor); the rest are packed."""
    chunks, pieces, packed = [], [], 0
    for lane in lanes:
        readable = lane.index is None and lane.tensor.dtype == dtype and lane.contiguous
        for start in range(0, lane.size, size):
            stop = min(lane.size, start + size)
            if readable and (small_in_place or stop - start == size):
                if pieces:  # a packed chunk covers consecutive positions only
                    chunks.append(_packed_chunk(pieces, packed))
                    pieces, packed = [], 0
                view = lane.tensor.detach().view(-1)[start:stop].numpy()
                chunks.append(Chunk(lane.start + start, stop - start, view, []))
                continue
            if packed + stop - start > size:
                chunks.append(_packed_chunk(pieces, packed))
                pieces, packed = [], 0
            pieces.append((lane, start, stop, packed))
            packed += stop - start
    if pieces:
        chunks.append(_packed_chunk(pieces, packed))
    return chunks


def _packed_chunk(pieces: list[tuple[Lane, int, int, int]], packed: int) -> Chunk:
    lane, start = pieces[0][0], pieces[0][1]
    return Chunk(lane.start + start, packed, None, list(pieces))


class LeanGroup:
    """The lanes of one device and compute dtype: one flat state and k buffer (each lane a
    view of its slice) and one sparse pass per step over the scalars flagged in any lane.

    ``backend="numpy"`` (CPU) compares codes and runs the state machine on numpy views of the
    same memory; ``"native"`` is the same with the dense comparison compiled
    (:mod:`signlock.trainables._native_flag`, one pass instead of ten); ``"torch"`` does it in
    torch (any device).
    """

    def __init__(self, lanes: list[Lane], backend: Backend) -> None:
        self.lanes = lanes
        self.backend = backend
        self.xp: Any = torch if backend == "torch" else np
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
        self.tau1 = [Tau1Table(lane.size) for lane in lanes]  # lane positions
        self.k_overflow: dict[int, int] = {}  # group position -> K
        self._scratch: CodeScratch | NativeFlagger | None = None
        if backend == "torch":
            self._state, self._k = self.state, self.k
        else:
            self._state, self._k = self.state.numpy(), self.k.numpy()
            self.eps, self.rho = lanes[0].eps, lanes[0].rho  # the compute dtype's, for all
            # the compiled pass costs little per call: it reads every tensor it can in place
            in_place = backend == "native"
            self._chunks = plan_chunks(lanes, self.dtype, PACKED_CHUNK, small_in_place=in_place)
            size = max(chunk.size for chunk in self._chunks)
            self._scratch = self._dense_pass(backend, size)
            packed = [chunk.size for chunk in self._chunks if chunk.in_place is None]
            self._packed = torch.empty(max(packed, default=0), dtype=self.dtype)
            self._packed_np = self._packed.numpy()
            if isinstance(self._scratch, NativeFlagger):
                self._native_calls = [self._bind(self._scratch, c) for c in self._chunks]

    def _bind(self, flagger: NativeFlagger, chunk: Chunk) -> Callable[[], Any]:
        x = chunk.in_place if chunk.in_place is not None else self._packed_np[: chunk.size]
        stored = self._state[chunk.offset : chunk.offset + chunk.size]
        return flagger.bind(x, stored, self.eps, self.rho, chunk.offset)

    def _dense_pass(self, backend: Backend, size: int) -> CodeScratch | NativeFlagger:
        if backend == "native":
            library = native_flag.load()
            if library is None:
                raise RuntimeError("no C compiler works here for the native dense pass")
            return NativeFlagger(library, size)
        return CodeScratch(size, self.dtype)

    # ----- dense pass -----

    def _as_compared(self, values: torch.Tensor) -> Any:
        if self.backend == "torch":
            return values
        return (values if values.dtype == self.dtype else values.to(self.dtype)).numpy()

    def _codes(self, lane: Lane, values: torch.Tensor) -> Any:
        x = self._as_compared(values)
        return (codes_torch if self.backend == "torch" else codes_numpy)(x, lane.eps, lane.rho)

    def record_initial(self) -> None:
        for lane in self.lanes:
            state = initial_state(self._codes(lane, lane.values()))
            lane.state.view(-1).copy_(torch.as_tensor(state, device=self.device))

    def observe(self, t: int) -> int:
        """Record observation t ≥ 1; returns the number of zero crossings t−1 → t."""
        for lane in self.lanes:
            lane.check_in_place()
        flagged = self._flag_torch() if self.backend == "torch" else self._flag_numpy()
        return sum(self._process(positions, codes, t) for positions, codes in flagged)

    def _flag_numpy(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per chunk of the group, the scalars whose code changed and their new codes, batched
        into passes of about ``SPARSE_CHUNK``. A chunk inside one contiguous tensor of the
        compute dtype is compared where it lies; smaller tensors (and other dtypes, sampled
        coordinates) are packed into a fixed scratch chunk."""
        positions: list[np.ndarray] = []
        codes: list[np.ndarray] = []
        pending = 0
        for i, chunk in enumerate(self._chunks):
            x = chunk.in_place if chunk.in_place is not None else self._pack(chunk)
            stored = self._state[chunk.offset : chunk.offset + chunk.size]
            for part_positions, part_codes in self._changed_in(i, chunk, x, stored):
                positions.append(part_positions)
                codes.append(part_codes)
                pending += part_positions.size
                if pending >= SPARSE_CHUNK:  # one state-machine pass for many chunks
                    yield np.concatenate(positions), np.concatenate(codes)
                    positions, codes, pending = [], [], 0
        if positions:
            yield np.concatenate(positions), np.concatenate(codes)

    def _changed_in(
        self, i: int, chunk: Chunk, x: np.ndarray, stored: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(group position, new code) of the scalars of chunk ``i`` whose code changed."""
        scratch = self._scratch
        if isinstance(scratch, NativeFlagger):
            found, codes = self._native_calls[i]()
            for start in range(0, found.size, SPARSE_CHUNK):  # bounded temporaries
                yield found[start : start + SPARSE_CHUNK], codes[start : start + SPARSE_CHUNK]
            return
        assert scratch is not None
        words = scratch.changed(x, stored, self.eps, self.rho)
        for start in range(0, words.size, SPARSE_CHUNK // 8):  # bounded temporaries
            part = scratch.flagged(words[start : start + SPARSE_CHUNK // 8])
            yield part + chunk.offset, codes_numpy(x[part], self.eps, self.rho)

    def _pack(self, chunk: Chunk) -> np.ndarray:
        for lane, start, stop, at in chunk.pieces:
            self._packed[at : at + stop - start].copy_(lane.values()[start:stop])
        return self._packed_np[: chunk.size]

    def _flag_torch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same per lane and chunk, each weight read in place in its own dtype."""
        for lane in self.lanes:
            values = lane.values()
            for start in range(0, lane.size, CODE_CHUNK):
                offset = lane.start + start
                x = values[start : start + CODE_CHUNK]
                stored = self._state[offset : offset + len(x)]
                flags = changed_codes(x, stored, lane.eps, lane.rho)
                changed = torch.nonzero(flags).view(-1)
                if len(changed):
                    yield changed + offset, codes_torch(x[changed], lane.eps, lane.rho)

    # ----- sparse pass: the exact state machine on the scalars whose code changed -----

    def _process(self, positions: Any, code: Any, t: int) -> int:
        step = transition(self._state[positions], code, self.xp)
        self._state[positions] = step["state"]
        lane_of = np.searchsorted(self.starts, _host(positions), side="right") - 1

        def per_lane(mask: Any) -> np.ndarray:
            return np.bincount(lane_of[_host(mask)], minlength=len(self.lanes))

        crossings = int(step["crossed"].sum())
        if crossings:
            self.counts[:, 0] += per_lane(step["crossed"])
            self.counts[:, 1] += per_lane(step["skip"])
        hits = positions[step["new_hit"]]
        if len(hits):
            self.counts[:, 2] += per_lane(step["new_hit"])
            self._record_hits(_host(hits), t)
        if bool(step["k_inc"].any()):
            self._increment_k(positions[step["k_inc"]], lane_of[_host(step["k_inc"])])
        return crossings

    def _record_hits(self, hits: np.ndarray, t: int) -> None:
        """τ1 = t for ``hits`` (sorted group positions), into each lane's table."""
        bounds = np.searchsorted(hits, [*self.starts, self.n])
        for i, (first, last) in enumerate(itertools.pairwise(bounds.tolist())):
            if last > first:
                self.tau1[i].append(hits[first:last] - self.lanes[i].start, t)

    def _increment_k(self, positions: Any, lanes: np.ndarray) -> None:
        """K += 1 at ``positions`` (group positions, in lanes ``lanes``)."""
        k = self._k[positions]
        self.counts[:, 3] += np.bincount(lanes[_host(k == 0)], minlength=len(self.lanes))
        self.counts[:, 4] += np.bincount(lanes, minlength=len(self.lanes))
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
        table = self.tau1[i]
        return table.all_positions().astype(np.int64), table.all_times()

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

    def resident_tensors(self) -> list[torch.Tensor]:
        indices = [lane.index for lane in self.lanes if lane.index is not None]
        scratch = [] if self._scratch is None else [self._packed, *self._scratch.buffers]
        return [self.state, self.k, *scratch, *indices]

    def host_table_bytes(self) -> int:
        return (
            sum(table.nbytes() for table in self.tau1)
            + len(self.k_overflow) * K_OVERFLOW_ENTRY_BYTES
        )

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

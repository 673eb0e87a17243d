"""Bit accounting of the sub-bit compression experiments (Appendix E.3.3, E.3.5).

Every storage model counts the bits it stores for one m × n matrix, split into sign, value and
index bits; ``bpw_eff`` is their sum over m·n (E.3.5). Budgets are compared exactly (as
fractions of their decimal text), so "bpw_eff ≤ target" never fails by a rounding of 0.075.

* SVD factors (SVD |W| naive and z-score, SVD W): b(mr + nr + r) value bits (E.3.5, Eq. 24).
* CSR (magnitude pruning, WANDA): nnz·b_val value bits, nnz·b_idx + (m + 1)·b_ptr index bits.
* HashedNets: K bucket values of b bits (the hash functions are regenerated from a seed).
* OneBit: m·n sign bits and two fp16 scale vectors, 16(m + n) value bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

VALUE_BITS = 4  # E.3.5: b = 4 for SVD factors, bucket values and kept values
INDEX_BITS = 32  # E.3.5: 32-bit CSR column indices
POINTER_BITS = 32  # E.3.5: 32-bit CSR row pointers
SCALE_BITS = 16  # fp16 scale vectors (OneBit) and z-score column statistics
PRUNE_START_KEEP_FRAC = Fraction(5, 1000)  # E.3.5: pruning runs only when keep ≥ 0.005
DEFAULT_BUDGETS = (0.075, 0.125, 0.25, 0.5, 0.75, 1.0, 1.58, 2.0)  # E.3.5 bpw_target grid


@dataclass(frozen=True)
class BitAccount:
    """Bits stored for ``weights`` original weights. ``side_bits`` are stored too but not counted
    in ``bpw_eff`` by E.3.5's accounting (the z-score variant's column statistics)."""

    weights: int
    sign_bits: int = 0
    value_bits: int = 0
    index_bits: int = 0
    side_bits: int = 0

    @property
    def bits(self) -> int:
        return self.sign_bits + self.value_bits + self.index_bits

    @property
    def bpw_eff(self) -> float:
        return self.bits / self.weights

    def within(self, budget: float) -> bool:
        """bpw_eff ≤ budget, exactly."""
        return Fraction(self.bits, self.weights) <= exact(budget)

    def __add__(self, other: BitAccount) -> BitAccount:
        return BitAccount(
            self.weights + other.weights,
            self.sign_bits + other.sign_bits,
            self.value_bits + other.value_bits,
            self.index_bits + other.index_bits,
            self.side_bits + other.side_bits,
        )


def exact(budget: float) -> Fraction:
    """The budget as the decimal the user wrote (0.075 is 3/40, not the nearest double)."""
    return Fraction(str(budget))


def svd_account(m: int, n: int, rank: int, bits: int = VALUE_BITS) -> BitAccount:
    # E.3.5: bpw_eff ≈ b·(mr + nr + r) / (mn)
    return BitAccount(m * n, value_bits=bits * (m * rank + n * rank + rank))


def csr_account(m: int, n: int, nnz: int) -> BitAccount:
    # E.3.5: (nnz·b_val + nnz·b_idx + (m + 1)·b_ptr) / (mn)
    return BitAccount(
        m * n, value_bits=nnz * VALUE_BITS, index_bits=nnz * INDEX_BITS + (m + 1) * POINTER_BITS
    )


def hashed_account(m: int, n: int, buckets: int) -> BitAccount:
    return BitAccount(m * n, value_bits=buckets * VALUE_BITS)


def onebit_account(m: int, n: int) -> BitAccount:
    return BitAccount(m * n, sign_bits=m * n, value_bits=SCALE_BITS * (m + n))


def largest_rank(m: int, n: int, budget: float, bits: int = VALUE_BITS) -> int:
    """The largest r ≤ min(m, n) with b(mr + nr + r) ≤ budget·mn (0: none fits)."""
    r = math.floor(exact(budget) * m * n / (bits * (m + n + 1)))
    return max(0, min(r, m, n))


def largest_nnz(m: int, n: int, budget: float) -> int:
    """The largest nnz ≤ mn whose CSR storage fits the budget (0: not even the pointers fit)."""
    free = exact(budget) * m * n - (m + 1) * POINTER_BITS
    return max(0, min(math.floor(free / (VALUE_BITS + INDEX_BITS)), m * n))


def largest_bucket_count(m: int, n: int, budget: float) -> int:
    """The most 4-bit buckets the budget holds, at most one per weight."""
    return max(0, min(math.floor(exact(budget) * m * n / VALUE_BITS), m * n))


def quantize(x: torch.Tensor, bits: int = VALUE_BITS, alpha: float | None = None) -> torch.Tensor:
    """Q_b(x; α) = α · clip(⌊x/α⌋, −2^{b−1}, 2^{b−1} − 1) (E.3.3, Eq. 23), computed in float64
    and returned in x's dtype. Unless given, α is :func:`symmetric_scale`."""
    if alpha is None:
        alpha = symmetric_scale(x, bits)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    levels = torch.clamp(torch.floor(x.double() / alpha), low, high)
    return (alpha * levels).to(x.dtype)


def symmetric_scale(x: torch.Tensor, bits: int = VALUE_BITS) -> float:
    """The largest α at which max|x| lands on the top level 2^{b−1} − 1 (not one below it by a
    rounding of max|x|/α); 1 for an all-zero x. The paper leaves α open."""
    largest = float(x.abs().max()) if x.numel() else 0.0
    if largest == 0:
        return 1.0
    alpha = largest / (2 ** (bits - 1) - 1)
    while largest / alpha < 2 ** (bits - 1) - 1:
        alpha = math.nextafter(alpha, 0.0)
    return alpha

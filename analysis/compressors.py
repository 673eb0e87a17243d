"""Compression methods of Figure 20 (Appendix E.3.3–E.3.6), one small class each.

``Method.compress(weight, budget, context)`` returns the reconstructed matrix Ŵ with its bit
account at the largest setting (rank, bucket count, kept entries) whose ``bpw_eff`` is at most
``budget``, or :class:`Unreachable` saying why no setting fits. Every method works on one
two-dimensional float matrix and never changes its input.

* ``svd-lockin-naive`` / ``svd-lockin-zscore``: the sign template's regenerable signs T (0 sign
  bits) times a truncated SVD of the magnitudes A = |W| (E.3.3; z-score preconditioning E.3.6).
* ``svd-w``: the same SVD budget spent on W itself (signs inside the factors).
* ``hashednets``: weight sharing, hash(i, j) → one of K buckets with a hashed sign; bucket value
  the mean of ξ·W over its entries, 4-bit; no fine-tuning.
* ``onebit``: sign(W) (1 bit) times a rank-1 fp16 approximation a·bᵀ of |W|.
* ``magnitude-prune`` / ``wanda``: unstructured pruning, kept values 4-bit, CSR storage; WANDA
  scores |W_ij|·‖X_j‖₂ with the input norms of a calibration batch and keeps the same number of
  entries in every output row (its per-output comparison group). Only run at keep ≥ 0.005.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from signlock.analysis.bit_accounting import (
    PRUNE_START_KEEP_FRAC,
    SCALE_BITS,
    VALUE_BITS,
    BitAccount,
    csr_account,
    hashed_account,
    largest_bucket_count,
    largest_nnz,
    largest_rank,
    onebit_account,
    quantize,
    svd_account,
)

Z_SCORE_EPS = 1e-6  # E.3.6's ε_zs ("a small numerical stabilizer"; its value is not given)


@dataclass(frozen=True)
class MatrixContext:
    """What a method may use besides W: the ±1 sign template (template methods), the ℓ2 norm of
    each input feature over a calibration batch (WANDA) and a seed for hash functions."""

    template: torch.Tensor | None = None
    input_norms: torch.Tensor | None = None
    seed: int = 0


@dataclass(frozen=True)
class Compressed:
    weight: torch.Tensor
    account: BitAccount
    setting: float  # rank, bucket count or keep fraction


@dataclass(frozen=True)
class Unreachable:
    reason: str


class Method(abc.ABC):
    """One compression method: a weight matrix and a bits-per-weight budget in, the rebuilt
    matrix and its bit account out (or why the budget cannot be met)."""

    name: ClassVar[str]
    needs_template: ClassVar[bool] = False

    @abc.abstractmethod
    def compress(
        self, weight: torch.Tensor, budget: float, context: MatrixContext
    ) -> Compressed | Unreachable: ...


def truncated_svd(
    matrix: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U_r (m×r), Σ_r (r), V_r (n×r) of the float64 SVD."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank].T


def _quantized(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    return x if bits is None else quantize(x, bits)


class SvdMethod(Method):
    """A truncated-SVD storage (E.3.5's bit formula) at the largest rank within the budget;
    subclasses rebuild the matrix from its rank-r factors. ``bits=None`` skips Q."""

    def __init__(self, bits: int | None = VALUE_BITS) -> None:
        self.bits = bits

    def compress(
        self, weight: torch.Tensor, budget: float, context: MatrixContext
    ) -> Compressed | Unreachable:
        m, n = weight.shape
        rank = largest_rank(m, n, budget)
        if rank < 1:
            return Unreachable("rank 1 exceeds the budget")
        rebuilt, account = self.rebuild(weight, rank, context)
        return Compressed(rebuilt.to(weight.dtype), account, rank)

    @abc.abstractmethod
    def rebuild(
        self, weight: torch.Tensor, rank: int, context: MatrixContext
    ) -> tuple[torch.Tensor, BitAccount]: ...

    def quantized_product(self, matrix: torch.Tensor, rank: int) -> torch.Tensor:
        """Q(U_r) Q(Σ_r) Q(V_r)ᵀ of ``matrix`` (E.3.3)."""
        u, s, v = truncated_svd(matrix, rank)
        q = self.bits
        return _quantized(u, q) @ torch.diag(_quantized(s, q)) @ _quantized(v, q).T


class SvdLockinNaive(SvdMethod):
    """Â = Q(U_r) Q(Σ_r) Q(V_r)ᵀ of A = |W|, Ŵ = T ⊙ Â (E.3.3)."""

    name = "svd-lockin-naive"
    needs_template = True

    def rebuild(
        self, weight: torch.Tensor, rank: int, context: MatrixContext
    ) -> tuple[torch.Tensor, BitAccount]:
        magnitudes = self.quantized_product(weight.abs(), rank)
        m, n = weight.shape
        return template_of(context) * magnitudes, svd_account(m, n, rank)  # Ŵ = T ⊙ Â


class SvdLockinZscore(SvdMethod):
    """E.3.6: column z-score of A = |W| (mean ζ, population std ω, D = diag(ω + ε_zs)), rank-r
    SVD with Σ folded into U, Q on both factors, A_b = A_b^zs·D + 1ζᵀ, max(·, 0), Ŵ = T ⊙ A_b.
    Bits by E.3.5's SVD formula; the 2n fp16 column statistics are recorded as side bits."""

    name = "svd-lockin-zscore"
    needs_template = True

    def __init__(self, bits: int | None = VALUE_BITS, eps: float = Z_SCORE_EPS) -> None:
        super().__init__(bits)
        self.eps = eps

    def rebuild(
        self, weight: torch.Tensor, rank: int, context: MatrixContext
    ) -> tuple[torch.Tensor, BitAccount]:
        m, n = weight.shape
        magnitudes = weight.abs().double()
        mean = magnitudes.mean(dim=0)  # ζ_j
        std = magnitudes.std(dim=0, correction=0)  # ω_j, population
        scale = std + self.eps  # diagonal of D_zs
        normalized = (magnitudes - mean) / scale  # A^zs = (A − 1ζᵀ) D⁻¹
        u, s, v = truncated_svd(normalized, rank)
        folded = u * s  # Ũ_r = U_r Σ_r
        approx = _quantized(folded, self.bits) @ _quantized(v.T, self.bits)
        restored = torch.clamp(approx * scale + mean, min=0.0)  # A_b ← max(A_b^zs D + 1ζᵀ, 0)
        bits = svd_account(m, n, rank).value_bits
        account = BitAccount(m * n, value_bits=bits, side_bits=2 * n * SCALE_BITS)
        return template_of(context) * restored, account


class SvdW(SvdMethod):
    """The SVD W baseline: the same factors and bits on W itself (signs stored in them)."""

    name = "svd-w"

    def rebuild(
        self, weight: torch.Tensor, rank: int, context: MatrixContext
    ) -> tuple[torch.Tensor, BitAccount]:
        m, n = weight.shape
        return self.quantized_product(weight, rank), svd_account(m, n, rank)


class HashedNets(Method):
    """Ŵ_ij = ξ(i, j)·v_{h(i, j)}: K buckets (as many as the budget holds), v_k the mean of
    ξ·W over bucket k, quantized to 4 bits; h and ξ from one seeded 64-bit hash."""

    name = "hashednets"

    def compress(
        self, weight: torch.Tensor, budget: float, context: MatrixContext
    ) -> Compressed | Unreachable:
        m, n = weight.shape
        buckets = largest_bucket_count(m, n, budget)
        if buckets < 1:
            return Unreachable("one 4-bit bucket exceeds the budget")
        bucket, sign = hash_buckets(m, n, buckets, context.seed)
        signed = (weight.double() * sign).reshape(-1)
        sums = torch.zeros(buckets, dtype=torch.float64).index_add_(0, bucket, signed)
        counts = torch.bincount(bucket, minlength=buckets).clamp(min=1)
        values = quantize(sums / counts)
        rebuilt = (values[bucket] * sign.reshape(-1)).reshape(m, n)
        return Compressed(rebuilt.to(weight.dtype), hashed_account(m, n, buckets), buckets)


def hash_buckets(m: int, n: int, buckets: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per entry, row-major: its bucket (int64) and its hashed sign ξ (float64 ±1)."""
    flat = np.arange(m * n, dtype=np.uint64)
    mixed = splitmix64(flat ^ splitmix64(np.full(1, seed, dtype=np.uint64)))
    bucket = torch.from_numpy((mixed % np.uint64(buckets)).astype(np.int64))
    sign_bit = (splitmix64(mixed) >> np.uint64(63)).astype(np.float64)
    return bucket, torch.from_numpy(1.0 - 2.0 * sign_bit).reshape(m, n)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class OneBit(Method):
    """Ŵ = sign(W) ⊙ (a bᵀ), a bᵀ the best rank-1 approximation of |W| with a, b stored in fp16;
    m·n sign bits plus 16(m + n) (OneBit's sign-value-independent decomposition)."""

    name = "onebit"

    def compress(
        self, weight: torch.Tensor, budget: float, context: MatrixContext
    ) -> Compressed | Unreachable:
        m, n = weight.shape
        account = onebit_account(m, n)
        if not account.within(budget):
            return Unreachable(f"1 sign bit per weight plus scales is {account.bpw_eff:.4f} bpw")
        u, s, v = truncated_svd(weight.abs(), 1)
        root = s[0].sqrt()
        # |W| ≥ 0, so its leading singular vectors can be taken nonnegative (Perron–Frobenius).
        a = (u[:, 0].abs() * root).to(torch.float16).double()
        b = (v[:, 0].abs() * root).to(torch.float16).double()
        signs = torch.where(weight >= 0, 1.0, -1.0).double()  # sign(0) = +1
        rebuilt = signs * torch.outer(a, b)
        return Compressed(rebuilt.to(weight.dtype), account, 1.0)


class MagnitudePrune(Method):
    """Keep the nnz entries of largest |W| (as many as CSR storage allows), values 4-bit."""

    name = "magnitude-prune"

    def compress(
        self, weight: torch.Tensor, budget: float, context: MatrixContext
    ) -> Compressed | Unreachable:
        m, n = weight.shape
        nnz = largest_nnz(m, n, budget)
        if nnz < PRUNE_START_KEEP_FRAC * m * n:
            return below_prune_start(nnz, m * n)
        kept = torch.topk(weight.abs().reshape(-1), nnz).indices
        return _sparse(weight, kept)


class Wanda(Method):
    """Keep, in every output row, the entries of largest |W_ij|·‖X_j‖₂ (WANDA's score), the same
    number per row, as many as CSR storage allows; values 4-bit."""

    name = "wanda"

    def compress(
        self, weight: torch.Tensor, budget: float, context: MatrixContext
    ) -> Compressed | Unreachable:
        m, n = weight.shape
        per_row = largest_nnz(m, n, budget) // m
        nnz = per_row * m
        if nnz == 0 or nnz < PRUNE_START_KEEP_FRAC * m * n:
            return below_prune_start(nnz, m * n)
        if context.input_norms is None:
            raise ValueError("wanda needs the calibration batch's input norms")
        score = weight.abs().double() * context.input_norms.double()  # |W_ij|·‖X_j‖₂
        columns = torch.topk(score, per_row, dim=1).indices
        kept = (torch.arange(m).unsqueeze(1) * n + columns).reshape(-1)
        return _sparse(weight, kept)


def below_prune_start(nnz: int, weights: int) -> Unreachable:
    return Unreachable(f"keep fraction {nnz / weights:.4f} < {float(PRUNE_START_KEEP_FRAC)}")


def _sparse(weight: torch.Tensor, kept: torch.Tensor) -> Compressed:
    m, n = weight.shape
    flat = torch.zeros(m * n, dtype=torch.float64)
    flat[kept] = quantize(weight.reshape(-1)[kept].double())
    account = csr_account(m, n, kept.numel())
    return Compressed(flat.reshape(m, n).to(weight.dtype), account, kept.numel() / (m * n))


def template_of(context: MatrixContext) -> torch.Tensor:
    if context.template is None:
        raise ValueError("a template method needs the matrix's sign template")
    return context.template.double()


METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (SvdLockinNaive, SvdLockinZscore, SvdW, HashedNets, OneBit, MagnitudePrune, Wanda)
}

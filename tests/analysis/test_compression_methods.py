"""Bit accounting (E.3.5), the quantizer (Eq. 23) and the compression methods of Figure 20,
against hand-computed values and slow references written from the formulas."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from signlock.analysis.bit_accounting import (
    DEFAULT_BUDGETS,
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
from signlock.analysis.compressors import (
    METHODS,
    Compressed,
    HashedNets,
    MagnitudePrune,
    MatrixContext,
    OneBit,
    SvdLockinNaive,
    SvdLockinZscore,
    SvdW,
    Unreachable,
    Wanda,
    hash_buckets,
)


def test_each_storage_model_counts_the_hand_computed_bits():
    assert svd_account(64, 32, 3) == BitAccount(2048, value_bits=4 * (64 * 3 + 32 * 3 + 3))
    assert svd_account(64, 32, 3).bits == 1164
    csr = csr_account(10, 20, 7)
    assert (csr.value_bits, csr.index_bits) == (7 * 4, 7 * 32 + 11 * 32)
    assert csr.bpw_eff == pytest.approx(604 / 200)
    assert hashed_account(8, 8, 5) == BitAccount(64, value_bits=20)
    onebit = onebit_account(8, 4)
    assert (onebit.sign_bits, onebit.value_bits, onebit.bpw_eff) == (32, 192, 224 / 32)


def test_largest_settings_are_the_largest_within_the_budget():
    assert largest_rank(64, 32, 0.5) == 2  # 4·(64+32+1)·2 = 776 ≤ 1024 < 4·97·3 = 1164
    assert largest_rank(64, 32, 0.01) == 0
    assert largest_rank(8, 8, 100.0) == 8  # capped at min(m, n)
    assert largest_nnz(100, 100, 0.5) == (5000 - 101 * 32) // 36  # 49
    assert largest_nnz(100, 100, 0.1) == 0  # the row pointers alone exceed it
    assert largest_bucket_count(40, 50, 0.075) == 37  # 0.075·2000/4 = 37.5
    for budget in DEFAULT_BUDGETS:  # exact at the boundary: 3/40 · 4000 = 300 bits = 75 buckets
        k = largest_bucket_count(40, 100, budget)
        assert hashed_account(40, 100, k).within(budget)
        assert not hashed_account(40, 100, k + 1).within(budget)


def slow_quantize(values: list[float], bits: int, alpha: float) -> list[float]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return [alpha * min(max(math.floor(v / alpha), low), high) for v in values]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantizer_is_eq_23(bits):
    x = torch.randn(500, dtype=torch.float64) * 3
    alpha = 0.37
    assert quantize(x, bits, alpha).tolist() == slow_quantize(x.tolist(), bits, alpha)
    default = quantize(x, bits)
    top = x.abs().max()
    assert float(default[x.abs().argmax()]).__abs__() >= float(top) * (1 - 1e-12) or x[
        x.abs().argmax()
    ] < 0  # the largest positive value is not clipped below itself
    assert len(torch.unique(default)) <= 2**bits


def template_and_magnitudes(m: int, n: int, rank: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    magnitudes = torch.rand(m, rank, generator=g, dtype=torch.float64) @ torch.rand(
        rank, n, generator=g, dtype=torch.float64
    )
    template = torch.where(torch.randn(m, n, generator=g) >= 0, 1.0, -1.0).double()
    return template, magnitudes


@pytest.mark.parametrize("rank", [1, 2, 5])
def test_rank_r_nonnegative_magnitudes_under_template_signs_are_rebuilt_exactly(rank):
    m, n = 40, 30
    template, magnitudes = template_and_magnitudes(m, n, rank, seed=rank)
    weight = template * magnitudes
    budget = float(Fraction(4 * rank * (m + n + 1), m * n)) + 1e-9  # rank r, not r + 1
    result = SvdLockinNaive(bits=None).compress(weight, budget, MatrixContext(template=template))
    assert isinstance(result, Compressed) and result.setting == rank
    torch.testing.assert_close(result.weight, weight, rtol=0, atol=1e-10)
    signed = SvdW(bits=None).compress(weight, budget, MatrixContext())
    assert isinstance(signed, Compressed)  # the signs make W itself far from rank r
    assert torch.linalg.norm(signed.weight - weight) > 0.1 * torch.linalg.norm(weight)


def random_weight(m: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed)) * 0.02


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("shape", [(64, 48), (17, 129)])
def test_every_method_stays_within_every_budget(name, shape):
    m, n = shape
    weight = random_weight(m, n, seed=m)
    template = torch.where(weight >= 0, 1.0, -1.0)
    context = MatrixContext(template=template, input_norms=torch.rand(n) + 0.5, seed=3)
    reached = 0
    for budget in DEFAULT_BUDGETS:
        result = METHODS[name]().compress(weight, budget, context)
        if isinstance(result, Unreachable):
            assert result.reason
            continue
        reached += 1
        assert result.account.within(budget), (name, budget, result.account.bpw_eff)
        assert result.account.weights == m * n
        assert result.weight.shape == weight.shape and torch.isfinite(result.weight).all()
    assert reached >= 1 or name == "onebit"  # 17 × 129: its fp16 scales alone cost 1.07 bpw


def slow_zscore(weight: np.ndarray, template: np.ndarray, rank: int, eps: float) -> np.ndarray:
    """E.3.6 term by term, unquantized."""
    a = np.abs(weight)
    m, n = a.shape
    zeta = np.array([sum(a[i, j] for i in range(m)) / m for j in range(n)])
    omega = np.array(
        [math.sqrt(sum((a[i, j] - zeta[j]) ** 2 for i in range(m)) / m) for j in range(n)]
    )
    d = np.diag(omega + eps)
    a_zs = (a - np.outer(np.ones(m), zeta)) @ np.linalg.inv(d)
    u, s, vt = np.linalg.svd(a_zs, full_matrices=False)
    u_tilde = u[:, :rank] @ np.diag(s[:rank])
    a_b = u_tilde @ vt[:rank] @ d + np.outer(np.ones(m), zeta)
    return template * np.maximum(a_b, 0)


def test_zscore_variant_is_e36():
    m, n, rank = 30, 20, 3
    weight = random_weight(m, n, seed=7).double()
    template = torch.where(torch.randn(m, n) >= 0, 1.0, -1.0).double()
    budget = float(Fraction(4 * rank * (m + n + 1), m * n)) + 1e-9
    result = SvdLockinZscore(bits=None).compress(weight, budget, MatrixContext(template=template))
    expected = slow_zscore(weight.numpy(), template.numpy(), rank, 1e-6)
    np.testing.assert_allclose(result.weight.numpy(), expected, atol=1e-12)
    assert result.account.side_bits == 2 * n * 16  # ζ and ω in fp16, outside E.3.5's bpw_eff
    quantized = SvdLockinZscore().compress(weight, budget, MatrixContext(template=template))
    assert (quantized.weight * template >= 0).all()  # max(·, 0) keeps the template's signs


def test_hashednets_buckets_hold_the_mean_of_their_signed_entries():
    m, n, budget = 12, 10, 1.0
    weight = random_weight(m, n, seed=2).double()
    result = HashedNets().compress(weight, budget, MatrixContext(seed=5))
    buckets = largest_bucket_count(m, n, budget)
    bucket, sign = hash_buckets(m, n, buckets, seed=5)
    members: dict[int, list[float]] = {}
    for flat, k in enumerate(bucket.tolist()):
        i, j = divmod(flat, n)
        members.setdefault(k, []).append(float(sign[i, j] * weight[i, j]))
    means = torch.tensor([np.mean(members.get(k, [0.0])) for k in range(buckets)])
    expected = quantize(means)[bucket].reshape(m, n) * sign
    torch.testing.assert_close(result.weight, expected)


def test_onebit_keeps_every_sign_and_one_fp16_scale_pair():
    weight = random_weight(64, 48, seed=4)
    result = OneBit().compress(weight, 2.0, MatrixContext())
    assert result.account.bpw_eff == pytest.approx(1 + 16 * (64 + 48) / (64 * 48))
    assert torch.equal(result.weight >= 0, weight >= 0)
    assert isinstance(OneBit().compress(weight, 1.0, MatrixContext()), Unreachable)


def test_pruning_keeps_the_largest_and_wanda_the_same_count_per_row():
    m, n = 50, 40
    weight = random_weight(m, n, seed=9)
    kept = MagnitudePrune().compress(weight, 2.0, MatrixContext())
    nnz = int((kept.weight != 0).sum())
    threshold = weight.abs().reshape(-1).sort(descending=True).values[nnz - 1]
    assert ((kept.weight != 0) == (weight.abs() >= threshold)).all()
    norms = torch.rand(n) + 0.1
    wanda = Wanda().compress(weight, 2.0, MatrixContext(input_norms=norms))
    per_row = (wanda.weight != 0).sum(dim=1)
    assert (per_row == per_row[0]).all() and per_row[0] > 0
    score = weight.abs() * norms
    for row in range(m):
        chosen = wanda.weight[row] != 0
        assert score[row][chosen].min() >= score[row][~chosen].max()
    assert isinstance(MagnitudePrune().compress(weight, 0.075, MatrixContext()), Unreachable)


def test_template_methods_are_refused_without_a_template_or_against_one():
    from signlock.analysis.compression import template_refusal

    weight = random_weight(6, 5, seed=1)
    template = torch.where(weight >= 0, 1, -1).to(torch.int8)
    assert template_refusal({"w": weight}, {"w": template}) is None
    zeroed = weight.clone()
    zeroed[0, 0] = 0.0  # an exact zero matches either sign (T ⊙ |0| = 0)
    assert template_refusal({"w": zeroed}, {"w": -template}) is not None
    assert template_refusal({"w": zeroed * 0}, {"w": -template}) is None
    assert "no sign template" in template_refusal({"w": weight}, {})
    flipped = template.clone()
    flipped[2, 3] *= -1
    assert "1 entries" in template_refusal({"w": weight}, {"w": flipped})

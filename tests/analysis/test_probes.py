"""One-bit-wall probes against slow references from C.2/C.3 and Table 2's reference rows."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from signlock.analysis import probes
from signlock.analysis.probes import (
    codec_rows,
    extract_matrices,
    ising_field,
    ks_test,
    onsager_magnetization,
    patch_entropy,
    rademacher,
    rademacher_field,
    rank2_template_field,
    sign_matrix,
    svd_errors,
)

# Table 2 (ratio = compressed / raw) for the three codecs the issue pins.
TABLE_2 = {
    "rademacher": {"bz2(9)": 1.005, "lzma(p6)": 1.000, "zlib(9)": 1.000},
    "rank2": {"bz2(9)": 0.062, "lzma(p6)": 0.043, "zlib(9)": 0.184},
}


@pytest.mark.parametrize(
    ("row", "field"), [("rademacher", rademacher_field), ("rank2", rank2_template_field)]
)
def test_table_2_reference_rows_at_2048(row, field):
    ratios = {r["codec"]: r["ratio"] for r in codec_rows(row, field())}
    for codec, paper in TABLE_2[row].items():
        assert ratios[codec] == pytest.approx(paper, abs=0.01), (codec, ratios[codec])


@pytest.mark.parametrize("beta", [0.3, 0.6])
def test_ising_sampler_reaches_onsagers_magnetization(beta):
    field = ising_field(size=256, beta=beta, sweeps=200 if beta < 0.44 else 60, seed=1)
    magnetization = abs(float(field.double().mean()))
    assert magnetization == pytest.approx(onsager_magnetization(beta), abs=0.02)


def test_ks_separates_random_signs_from_a_rank_2_template():
    random_signs = rademacher((512, 700), torch.Generator().manual_seed(3))
    assert ks_test([("random", random_signs)]).statistic < 0.05
    assert ks_test([("template", rank2_template_field(512, seed=4))]).statistic > 0.5
    assert ks_test([("thin", rademacher((20, 400), torch.Generator()))]) is None  # s < 32


def test_ks_blocks_follow_c35():
    result = ks_test([("a", rademacher((300, 100), torch.Generator().manual_seed(0)))])
    assert result.layers == [{"matrix": "a", "s": 100, "submatrices": 20}]
    assert len(result.sign_values) == len(result.rademacher_values) == 20 * 100


def slow_errors(matrix: np.ndarray) -> list[tuple[float, int, float]]:
    sigma = np.linalg.svd(matrix, compute_uv=False)
    d = min(matrix.shape)
    out = []
    for k in range(11):
        q = 2**k / 2048
        r = min(d, max(1, math.floor(q * d)))
        out.append((q, r, math.sqrt(sum(s**2 for s in sigma[r:]) / sum(s**2 for s in sigma))))
    return out


def test_svd_error_is_c34():
    w = torch.randn(300, 220, generator=torch.Generator().manual_seed(0))
    for matrix in (w, w.abs(), sign_matrix(w).float()):
        got = svd_errors(matrix)
        for (q, r, e), (q2, r2, e2) in zip(got, slow_errors(matrix.double().numpy()), strict=True):
            assert (q, r) == (q2, r2) and e == pytest.approx(e2, abs=1e-6)


def test_randomized_svd_above_the_exact_limit_estimates_the_tail(monkeypatch):
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(400, 400, generator=g))
    v, _ = torch.linalg.qr(torch.randn(300, 300, generator=g))
    spectrum = torch.tensor([0.9**i for i in range(300)])
    matrix = (u[:, :300] * spectrum) @ v.T
    exact = svd_errors(matrix)
    monkeypatch.setattr(probes, "EXACT_SVD_MAX_D", 100)
    randomized = svd_errors(matrix)
    for (_, _, e), (_, _, e2) in zip(exact, randomized, strict=True):
        assert e2 == pytest.approx(e, abs=1e-3)


def slow_patch_entropy(signs: np.ndarray) -> float:
    m, n = signs.shape
    counts = Counter()
    for i in range(m - 2):
        for j in range(n - 2):
            bits = "".join(
                "1" if signs[i + a, j + b] > 0 else "0" for a in range(3) for b in range(3)
            )
            counts[int(bits, 2)] += 1
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) / 9


def test_patch_entropy_is_c2():
    signs = rademacher((23, 31), torch.Generator().manual_seed(2))
    assert patch_entropy(signs) == pytest.approx(slow_patch_entropy(signs.numpy()), abs=1e-12)
    assert patch_entropy(torch.ones(10, 10, dtype=torch.int8)) == 0.0
    assert patch_entropy(rademacher((512, 512), torch.Generator())) > 0.99
    sampled = patch_entropy(rademacher((512, 512), torch.Generator()), max_patches=50_000)
    assert sampled == pytest.approx(1.0, abs=0.01)  # a uniform sample of positions


def test_matrices_are_extracted_as_c32():
    named = [
        ("blocks.0.attn.weight", torch.randn(64, 32)),
        ("tok_embed.weight", torch.randn(100, 64)),
        ("lm_head.weight", torch.randn(100, 64)),
        ("conv.weight", torch.randn(16, 3, 3, 3, dtype=torch.float16)),
        ("ln.weight", torch.randn(64)),
        ("big.weight", torch.randn(128, 96)),
    ]
    found = extract_matrices(named)
    assert [name for name, _ in found] == ["big.weight", "blocks.0.attn.weight", "conv.weight"]
    conv = dict(found)["conv.weight"]
    assert conv.shape == (16, 27) and conv.dtype == torch.float32
    assert [n for n, _ in extract_matrices(named, excluded=())][:2] == [
        "big.weight",
        "lm_head.weight",
    ]


def test_sign_of_zero_is_plus_one():
    assert sign_matrix(torch.tensor([[0.0, -0.0, -1e-30, 2.0]])).tolist() == [[1, 1, -1, 1]]

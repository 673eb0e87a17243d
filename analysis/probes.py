"""One-bit-wall probes of sign matrices (Section 2; Appendices C.2, C.3, E.1.1; Table 2).

* Matrices (C.3.2): two-dimensional weights as they are, Conv kernels flattened to
  C_out × (C_in·k_h·k_w); names containing ``emb`` (C.3.2: ``embed``) or ``lm_head`` left out;
  sorted by d = min(m, n), largest first; float32. S = sign(W) with sign(0) = +1, A = |W| (C.3.3).
* E_r(M) = ‖M − M_r‖_F / ‖M‖_F over q = r/d ∈ {1/2048, …, 1024/2048}, r = ⌊q·d⌋ ≥ 1; exact
  singular values up to d = 2048, randomized (``torch.svd_lowrank``) above (C.3.4).
* KS (C.3.5): per matrix s = min(256, d) (skipped when s < 32), 20 contiguous s × s blocks at
  uniform offsets, singular values / √s pooled over blocks and matrices, against the same
  procedure on i.i.d. Rademacher matrices; two-sample Kolmogorov–Smirnov D and p-value.
* Ĥ_RD (C.2): plug-in entropy of 3 × 3 sign patches (9-bit patterns, +1 → 1) over 9, per
  matrix, entry-weighted over matrices; all patch positions, or a uniform sample of them.
* Codecs (E.1.1, Table 2): bit-packed signs (row-major, +1 → 1) through raw DEFLATE, zlib, gzip,
  bz2 and LZMA, plus Zstandard, Brotli, LZ4 and Snappy when installed; ratio = compressed / raw.
  Reference rows: i.i.d. Rademacher, a 2-D Ising field and a rank-2 template, 2048 × 2048, each
  measured by signlock; the paper's printed ratios for them are :data:`PAPER_TABLE_2`. The Ising
  row is an equilibrium heat-bath sample (its magnetization checked against Onsager's), which
  compresses far less than the paper's printed Ising row (BENCHMARKS.md, Table 2).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

# C.3.2 leaves out names containing "embed" or "lm_head"; "emb" also catches signlock's own
# token and position tables (tok_emb, pos_emb).
EXCLUDED_NAMES = ("emb", "lm_head")
Q_GRID = tuple(2**k / 2048 for k in range(11))  # C.3.4: 1/2048, 2/2048, …, 1024/2048
EXACT_SVD_MAX_D = 2048  # C.3.4
TOP_FOR_SVD = 40  # C.3.2: up to 40 matrices for E_r
TOP_FOR_KS = 6  # C.3.2: up to 6 for the KS test
TOP_FOR_ENTROPY = 6  # C.2: L = 6
KS_BLOCK, KS_MIN_BLOCK, KS_BLOCKS = 256, 32, 20  # C.3.5
PATCH = 3  # C.2: 3 × 3 patches
DEFAULT_MAX_PATCHES = 1 << 20  # beyond this many positions, a uniform sample (C.2)
REFERENCE_SIZE = 2048  # Table 2
ISING_BETA = 0.6  # Table 2
ISING_SWEEPS = 60
ZSTD_LEVELS = (10, 3)  # Table 2's "zstd(l10)" and "zstd(l3)" (printed "zstd(110)", "zstd(13)")


def sign_matrix(weight: torch.Tensor) -> torch.Tensor:
    """S = sign(W) ∈ {±1} as int8, sign(0) = +1 (C.3.3)."""
    return torch.where(weight >= 0, 1, -1).to(torch.int8)


def as_matrix(tensor: torch.Tensor) -> torch.Tensor | None:
    """A float32 m × n view of a weight (Conv kernels: C_out × rest), or None below 2 dims."""
    if tensor.dim() < 2 or not tensor.is_floating_point():
        return None
    return tensor.detach().reshape(tensor.shape[0], -1).to(torch.float32)


def extract_matrices(
    named: Iterable[tuple[str, torch.Tensor]], excluded: tuple[str, ...] = EXCLUDED_NAMES
) -> list[tuple[str, torch.Tensor]]:
    """C.3.2's matrices, largest d = min(m, n) first (ties by name)."""
    found = []
    for name, tensor in named:
        if any(word in name for word in excluded):
            continue
        matrix = as_matrix(tensor)
        if matrix is not None:
            found.append((name, matrix))
    return sorted(found, key=lambda item: (-min(item[1].shape), item[0]))


# ---- E_r (C.3.4) ------------------------------------------------------------------------------


def ranks_for(d: int) -> list[tuple[float, int]]:
    return [(q, min(d, max(1, math.floor(q * d)))) for q in Q_GRID]


def leading_singular_values(matrix: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` largest singular values: exact up to d = 2048, randomized above."""
    d = min(matrix.shape)
    if d <= EXACT_SVD_MAX_D:
        return torch.linalg.svdvals(matrix)[:count].double()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # svd_lowrank draws its test matrix from the global generator
    try:
        _, values, _ = torch.svd_lowrank(matrix, q=min(count + 10, d), niter=4)
    finally:
        torch.random.set_rng_state(generator_state)
    return values[:count].double()


def svd_errors(matrix: torch.Tensor) -> list[tuple[float, int, float]]:
    """(q, r, E_r) over C.3.4's grid."""
    d = min(matrix.shape)
    grid = ranks_for(d)
    total = float(matrix.double().square().sum())
    values = leading_singular_values(matrix, max(r for _, r in grid))
    kept = torch.cumsum(values.square(), 0)
    rows = []
    for q, r in grid:
        tail = max(0.0, total - float(kept[min(r, len(kept)) - 1]))
        rows.append((q, r, math.sqrt(tail / total) if total > 0 else 0.0))
    return rows


# ---- KS against Rademacher (C.3.5) ------------------------------------------------------------


@dataclass(frozen=True)
class KsResult:
    statistic: float
    p_value: float
    layers: list[dict[str, int | str]]  # name, s, submatrices
    sign_values: np.ndarray  # pooled normalized singular values
    rademacher_values: np.ndarray


def block_singular_values(
    signs: torch.Tensor, s: int, blocks: int, generator: torch.Generator
) -> np.ndarray:
    m, n = signs.shape
    rows = torch.randint(0, m - s + 1, (blocks,), generator=generator).tolist()
    cols = torch.randint(0, n - s + 1, (blocks,), generator=generator).tolist()
    values = [
        torch.linalg.svdvals(signs[i : i + s, j : j + s].double()) / math.sqrt(s)
        for i, j in zip(rows, cols, strict=True)
    ]
    return torch.cat(values).numpy()


def rademacher(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    return (2 * torch.randint(0, 2, shape, generator=generator, dtype=torch.int8) - 1).to(
        torch.int8
    )


def ks_test(signs: list[tuple[str, torch.Tensor]], seed: int = 0) -> KsResult | None:
    """C.3.5 over the given sign matrices; None when every one has s < 32."""
    from scipy.stats import ks_2samp

    generator = torch.Generator().manual_seed(seed)
    sign_parts, random_parts, layers = [], [], []
    for name, matrix in signs:
        s = min(KS_BLOCK, *matrix.shape)
        if s < KS_MIN_BLOCK:
            continue
        sign_parts.append(block_singular_values(matrix, s, KS_BLOCKS, generator))
        baseline = rademacher((s, s * KS_BLOCKS), generator)
        random_parts.append(
            np.concatenate(
                [
                    torch.linalg.svdvals(block.double()).numpy() / math.sqrt(s)
                    for block in baseline.split(s, dim=1)
                ]
            )
        )
        layers.append({"matrix": name, "s": s, "submatrices": KS_BLOCKS})
    if not layers:
        return None
    pooled, reference = np.concatenate(sign_parts), np.concatenate(random_parts)
    result = ks_2samp(pooled, reference)
    return KsResult(float(result.statistic), float(result.pvalue), layers, pooled, reference)


# ---- patch entropy (C.2) ----------------------------------------------------------------------


def patch_entropy(
    signs: torch.Tensor, max_patches: int = DEFAULT_MAX_PATCHES, seed: int = 0
) -> float:
    """Ĥ_RD,l = Ĥ_patch,l / 9 of one sign matrix (C.2)."""
    m, n = signs.shape
    if m < PATCH or n < PATCH:
        return math.nan
    bits = (signs > 0).to(torch.int64)
    rows, cols = m - PATCH + 1, n - PATCH + 1
    if rows * cols <= max_patches:
        corner_i = torch.arange(rows).repeat_interleave(cols)
        corner_j = torch.arange(cols).repeat(rows)
    else:
        generator = torch.Generator().manual_seed(seed)
        corner_i = torch.randint(0, rows, (max_patches,), generator=generator)
        corner_j = torch.randint(0, cols, (max_patches,), generator=generator)
    pattern = torch.zeros_like(corner_i)
    for di in range(PATCH):
        for dj in range(PATCH):
            pattern = pattern * 2 + bits[corner_i + di, corner_j + dj]
    counts = torch.bincount(pattern, minlength=2 ** (PATCH * PATCH)).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * torch.log2(p)).sum()) / (PATCH * PATCH)


def entropy_proxy(
    signs: list[tuple[str, torch.Tensor]], max_patches: int = DEFAULT_MAX_PATCHES
) -> tuple[float, dict[str, float]]:
    """(entry-weighted Ĥ_RD, per-matrix Ĥ_RD,l) (C.2)."""
    per_layer = {name: patch_entropy(matrix, max_patches) for name, matrix in signs}
    weights = {name: matrix.numel() for name, matrix in signs}
    valid = [name for name, value in per_layer.items() if not math.isnan(value)]
    total = sum(weights[name] for name in valid)
    if not total:
        return math.nan, per_layer
    return sum(weights[name] * per_layer[name] for name in valid) / total, per_layer


# ---- codecs (E.1.1, Table 2) ------------------------------------------------------------------


def packed_signs(signs: torch.Tensor) -> bytes:
    """Row-major bit-packed signs, +1 → 1."""
    return np.packbits((signs > 0).numpy().reshape(-1)).tobytes()


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def available_codecs() -> dict[str, Callable[[bytes], bytes]]:
    """The always-present codecs at their strongest settings, then the optional ones installed
    (``pip install 'signlock[codecs]'``)."""
    codecs: dict[str, Callable[[bytes], bytes]] = {
        "raw_deflate(9)": _raw_deflate,
        "zlib(9)": lambda data: zlib.compress(data, 9),
        "gzip(9)": lambda data: gzip.compress(data, 9, mtime=0),
        "bz2(9)": lambda data: bz2.compress(data, 9),
        "lzma(p6)": lambda data: lzma.compress(data, preset=6),
    }
    try:
        import zstandard
    except ImportError:
        pass
    else:
        for level in ZSTD_LEVELS:
            codecs[f"zstd({level})"] = zstandard.ZstdCompressor(level=level).compress
    try:
        import brotli
    except ImportError:
        pass
    else:
        for quality in (11, 5):
            codecs[f"brotli(q{quality})"] = lambda data, q=quality: brotli.compress(data, quality=q)
    try:
        import lz4.frame
    except ImportError:
        pass
    else:
        codecs["lz4"] = lz4.frame.compress
    try:
        import snappy
    except ImportError:
        pass
    else:
        codecs["snappy"] = snappy.compress
    return codecs


def codec_rows(name: str, signs: torch.Tensor) -> list[dict[str, object]]:
    raw = packed_signs(signs)
    return [
        {
            "matrix": name,
            "codec": codec,
            "compressed_bytes": len(compress(raw)),
            "raw_bytes": len(raw),
            "ratio": len(compress(raw)) / len(raw),
        }
        for codec, compress in available_codecs().items()
    ]


# ---- Table 2's reference sign fields ---------------------------------------------------------


def rademacher_field(size: int = REFERENCE_SIZE, seed: int = 0) -> torch.Tensor:
    return rademacher((size, size), torch.Generator().manual_seed(seed))


def rank2_template_field(size: int = REFERENCE_SIZE, seed: int = 0) -> torch.Tensor:
    """sign(G Hᵀ), G, H ∈ R^{size×2} i.i.d. Unif[−1, 1] (E.3.1 Eq. 21 with E.3.5's P_init)."""
    generator = torch.Generator().manual_seed(seed)
    g = torch.rand(size, 2, generator=generator, dtype=torch.float64) * 2 - 1
    h = torch.rand(size, 2, generator=generator, dtype=torch.float64) * 2 - 1
    return sign_matrix(g @ h.T)


def ising_field(
    size: int = REFERENCE_SIZE, beta: float = ISING_BETA, sweeps: int = ISING_SWEEPS, seed: int = 0
) -> torch.Tensor:
    """An equilibrium sample of the 2-D Ising model P(s) ∝ exp(β Σ_⟨ij⟩ s_i s_j) on a periodic
    size × size lattice: checkerboard heat-bath sweeps from the all-up state (for β above
    β_c = ln(1 + √2)/2 ≈ 0.4407 the + phase; its magnetization converges to Onsager's
    (1 − sinh(2β)^−4)^{1/8} within a few tens of sweeps, see :func:`onsager_magnetization`)."""
    rng = np.random.default_rng(seed)
    spins = np.ones((size, size), dtype=np.int8)
    rows, cols = np.indices((size, size))
    black = (rows + cols) % 2 == 0
    for _ in range(sweeps):
        for sites in (black, ~black):
            field = (np.roll(spins, 1, 0) + np.roll(spins, -1, 0) + np.roll(spins, 1, 1)).astype(
                np.int16
            ) + np.roll(spins, -1, 1)
            p_up = 1.0 / (1.0 + np.exp(-2.0 * beta * field))
            drawn = np.where(rng.random((size, size)) < p_up, 1, -1).astype(np.int8)
            spins[sites] = drawn[sites]
    return torch.from_numpy(spins)


def onsager_magnetization(beta: float) -> float:
    """Spontaneous magnetization of the square-lattice Ising model (0 at and above T_c)."""
    x = math.sinh(2 * beta) ** -4
    return (1 - x) ** 0.125 if x < 1 else 0.0


REFERENCE_FIELDS: dict[str, Callable[[], torch.Tensor]] = {
    "Rademacher baseline (2048x2048)": rademacher_field,
    f"2D Ising baseline (beta={ISING_BETA})": ising_field,
    "Low-rank sign baseline (rank=2)": rank2_template_field,
}


def reference_note(name: str, signs: torch.Tensor) -> str:
    """How signlock drew a reference field, for the rows and figure (empty but for the Ising)."""
    if not name.startswith("2D Ising"):
        return ""
    magnetization = abs(float(signs.double().mean()))
    return (
        f"signlock's Ising field: an equilibrium heat-bath sample ({ISING_SWEEPS} checkerboard "
        f"sweeps from all-up), |m| = {magnetization:.4f} vs Onsager's "
        f"{onsager_magnetization(ISING_BETA):.4f}"
    )


# Table 2 of the paper ("Compressibility of sign bits across compression algorithms (ratio =
# compressed / raw)", Appendix E.1.1): its three reference rows as printed, under signlock's codec
# names. The paper's headers read "bz2(19)", "gzip(19)", "raw_deflate(19)", "zlib(19)",
# "zstd(110)", "zstd(13)": level l9, l10 and l3 (zstd l10/l3 match signlock's rank-2 row at
# 0.054/0.085; the paper's 0.053/0.083). It has no LZ4 column.
PAPER_TABLE_2: dict[str, dict[str, float]] = {
    "Rademacher baseline (2048x2048)": {
        "brotli(q11)": 1.000, "brotli(q5)": 1.000, "bz2(9)": 1.005, "gzip(9)": 1.000,
        "lzma(p6)": 1.000, "raw_deflate(9)": 1.000, "snappy": 1.000, "zlib(9)": 1.000,
        "zstd(10)": 1.000, "zstd(3)": 1.000,
    },
    f"2D Ising baseline (beta={ISING_BETA})": {
        "brotli(q11)": 0.001, "brotli(q5)": 0.002, "bz2(9)": 0.004, "gzip(9)": 0.025,
        "lzma(p6)": 0.004, "raw_deflate(9)": 0.025, "snappy": 0.067, "zlib(9)": 0.025,
        "zstd(10)": 0.002, "zstd(3)": 0.003,
    },
    "Low-rank sign baseline (rank=2)": {
        "brotli(q11)": 0.047, "brotli(q5)": 0.054, "bz2(9)": 0.062, "gzip(9)": 0.184,
        "lzma(p6)": 0.043, "raw_deflate(9)": 0.184, "snappy": 0.417, "zlib(9)": 0.184,
        "zstd(10)": 0.053, "zstd(3)": 0.083,
    },
}  # fmt: skip


def paper_ratio(name: str, codec: str) -> float:
    """The paper's printed Table 2 ratio of a reference row and codec (NaN where it has none)."""
    return PAPER_TABLE_2.get(name, {}).get(codec, math.nan)

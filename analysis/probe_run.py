"""``signlock probe``: the one-bit-wall probes of :mod:`signlock.analysis.probes` over weights
from anywhere, written as tables, JSON and figures under one directory.

Sources (each becomes one or two probed weight sets, its "source" label):

* a signlock run directory: its initial weights (rebuilt exactly as the trial built them, on the
  device it ran on) and its final checkpoint (``<run>/initial``, ``<run>/final``);
* a signlock sweep (name under the storage, or its directory): every finished trial's pair;
* a PyTorch state_dict file (``torch.load(weights_only=True)``; a signlock checkpoint's
  ``model`` entry is used);
* a safetensors file, or a Hugging Face-style model directory of ``*.safetensors`` shards.

Outputs: ``svd_error.csv`` (source, matrix, q, r, E_r_S, E_r_A; matrix ``__mean__`` rows are the
average over the source's matrices), ``ks.json``, ``entropy.json``, ``codecs.csv`` (source,
matrix, codec, bytes, ratio; ``__pooled__`` rows per source and codec; Table 2's reference rows
under source ``reference``), ``svd_error.png``, ``ks_cdf.png``, ``codecs.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from signlock.analysis import probes
from signlock.trainables.errors import ConfigError

NamedTensors = list[tuple[str, torch.Tensor]]
POOLED = "__pooled__"
MEAN = "__mean__"
REFERENCE = "reference"


@dataclass(frozen=True)
class ProbeSource:
    label: str
    load: Callable[[], NamedTensors]


@dataclass
class ProbeResult:
    directory: Path
    files: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


# ---- sources ----------------------------------------------------------------------------------


def is_run_directory(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "checkpoints" / "latest.pt").is_file()


def checkpoint_weights(path: Path) -> NamedTensors:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError("PATH", str(path), "a state_dict (a mapping of names to tensors)")
    return [(k, v) for k, v in state.items() if isinstance(v, torch.Tensor)]


def safetensors_weights(paths: list[Path]) -> NamedTensors:
    from safetensors.torch import load_file

    return [item for path in sorted(paths) for item in load_file(str(path)).items()]


def initial_weights(run_dir: Path) -> NamedTensors:
    """The weights the trial started from, rebuilt as its constructor built them (same seed,
    same device kind: CUDA draws differ from CPU draws)."""
    from signlock.trainables.trainer import Trial, load_run_config

    cfg = load_run_config(run_dir)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        device = json.loads(summary_path.read_text()).get("device") or cfg.device
        cfg = cfg.with_overrides({"device": "cuda" if str(device).startswith("cuda") else "cpu"})
    trial = Trial(cfg, run_dir, progress=False)
    return [(k, v.detach().cpu()) for k, v in trial.model.state_dict().items()]


def run_sources(run_dir: Path, label: str) -> list[ProbeSource]:
    final = run_dir / "checkpoints" / "latest.pt"
    return [
        ProbeSource(f"{label}/initial", lambda: initial_weights(run_dir)),
        ProbeSource(f"{label}/final", lambda: checkpoint_weights(final)),
    ]


def resolve_sources(path_text: str, storage: Path) -> list[ProbeSource]:
    """The probed weight sets of one PATH argument (one-line ConfigError when it is none)."""
    path = Path(path_text)
    if path.is_dir() and is_run_directory(path):
        return run_sources(path, path.name)
    if path.is_dir() and sorted(path.glob("*.safetensors")):
        shards = sorted(path.glob("*.safetensors"))
        return [ProbeSource(path.name, lambda: safetensors_weights(shards))]
    if path.is_file() and path.suffix == ".safetensors":
        return [ProbeSource(path.stem, lambda: safetensors_weights([path]))]
    if path.is_file():
        return [ProbeSource(path.stem, lambda: checkpoint_weights(path))]
    return sweep_sources(path_text, storage)


def sweep_sources(name_or_path: str, storage: Path) -> list[ProbeSource]:
    from signlock.analysis.sweep_data import load_sweep

    try:
        sweep = load_sweep(name_or_path, storage)
    except (ConfigError, FileNotFoundError) as error:
        raise ConfigError(
            "PATH",
            name_or_path,
            "a run directory, a sweep (name or directory), a state_dict file, a safetensors file "
            "or a directory of safetensors shards",
        ) from error
    runs = sweep.directory / "runs"
    return [
        source
        for trial in sweep.trials["name"]
        if is_run_directory(runs / trial)
        for source in run_sources(runs / trial, trial)
    ]


# ---- probing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeOptions:
    excluded: tuple[str, ...] = probes.EXCLUDED_NAMES
    top_svd: int = probes.TOP_FOR_SVD
    top_ks: int = probes.TOP_FOR_KS
    top_entropy: int = probes.TOP_FOR_ENTROPY
    max_patches: int = probes.DEFAULT_MAX_PATCHES
    references: bool = True
    seed: int = 0


def svd_rows(label: str, matrices: NamedTensors) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, matrix in matrices:
        signs = probes.sign_matrix(matrix).float()
        for (q, r, e_s), (_, _, e_a) in zip(
            probes.svd_errors(signs), probes.svd_errors(matrix.abs()), strict=True
        ):
            rows.append(
                {"source": label, "matrix": name, "q": q, "r": r, "E_r_S": e_s, "E_r_A": e_a}
            )
    if rows:
        frame = pd.DataFrame(rows)
        for q, group in frame.groupby("q", sort=True):
            rows.append(
                {"source": label, "matrix": MEAN, "q": q, "r": -1,
                 "E_r_S": group.E_r_S.mean(), "E_r_A": group.E_r_A.mean()}
            )  # fmt: skip
    return rows


def codec_table(label: str, matrices: NamedTensors) -> list[dict[str, object]]:
    rows = [
        {"source": label, **row}
        for name, matrix in matrices
        for row in probes.codec_rows(name, probes.sign_matrix(matrix))
    ]
    return rows + pooled_rows(label, rows)


def pooled_rows(label: str, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    if not rows:
        return []
    frame = pd.DataFrame(rows).groupby("codec", sort=False)[["compressed_bytes", "raw_bytes"]].sum()
    return [
        {"source": label, "matrix": POOLED, "codec": codec,
         "compressed_bytes": int(r.compressed_bytes), "raw_bytes": int(r.raw_bytes),
         "ratio": r.compressed_bytes / r.raw_bytes}
        for codec, r in frame.iterrows()
    ]  # fmt: skip


def probe_one(
    source: ProbeSource, options: ProbeOptions
) -> tuple[list[dict], dict, dict, list[dict], probes.KsResult | None]:
    matrices = probes.extract_matrices(source.load(), options.excluded)
    label = source.label
    signs = [(name, probes.sign_matrix(m)) for name, m in matrices]
    ks = probes.ks_test(signs[: options.top_ks], seed=options.seed)
    ks_json = {"layers": [], "D": None, "p_value": None}
    if ks is not None:
        ks_json = {"D": ks.statistic, "p_value": ks.p_value, "layers": ks.layers}
    aggregate, per_layer = probes.entropy_proxy(signs[: options.top_entropy], options.max_patches)
    entropy_json = {"H_RD": aggregate, "layers": per_layer}
    svd = svd_rows(label, matrices[: options.top_svd])
    codecs = codec_table(label, matrices)
    return svd, ks_json, entropy_json, codecs, ks


def run_probe(sources: list[ProbeSource], out: Path, options: ProbeOptions) -> ProbeResult:
    """Probe every source; write the tables, JSON and figures into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    result = ProbeResult(out)
    svd, codecs = [], []
    ks_all, entropy_all, ks_values = {}, {}, {}
    for source in tqdm(sources, desc="probe", unit="source", leave=False):
        rows, ks_json, entropy_json, codec_rows, ks = probe_one(source, options)
        svd += rows
        codecs += codec_rows
        ks_all[source.label] = ks_json
        entropy_all[source.label] = entropy_json
        if ks is not None:
            ks_values[source.label] = ks
        result.metrics.update(source_metrics(source.label, ks_json, entropy_json, codec_rows))
    if options.references:
        codecs += reference_rows()
    write_outputs(result, pd.DataFrame(svd), ks_all, entropy_all, pd.DataFrame(codecs), ks_values)
    return result


def reference_rows() -> list[dict[str, object]]:
    return [
        {"source": REFERENCE, **row}
        for name, field_of in probes.REFERENCE_FIELDS.items()
        for row in probes.codec_rows(name, field_of())
    ]


def source_metrics(label: str, ks: dict, entropy: dict, codecs: list[dict]) -> dict[str, float]:
    key = label.replace("/", ".")
    metrics = {}
    if ks["D"] is not None:
        metrics[f"probe.{key}.ks_D"] = ks["D"]
    if not math.isnan(entropy["H_RD"]):
        metrics[f"probe.{key}.H_RD"] = entropy["H_RD"]
    for row in codecs:
        if row["matrix"] == POOLED and row["codec"] in ("bz2(9)", "lzma(p6)", "zlib(9)"):
            codec = str(row["codec"]).split("(")[0]
            metrics[f"probe.{key}.{codec}_ratio"] = float(row["ratio"])
    return metrics


# ---- outputs ----------------------------------------------------------------------------------


def write_outputs(
    result: ProbeResult,
    svd: pd.DataFrame,
    ks: dict,
    entropy: dict,
    codecs: pd.DataFrame,
    ks_values: dict[str, probes.KsResult],
) -> None:
    out = result.directory
    for name, frame in (("svd_error.csv", svd), ("codecs.csv", codecs)):
        frame.to_csv(out / name, index=False)
        result.files.append(out / name)
    for name, payload in (("ks.json", ks), ("entropy.json", entropy)):
        (out / name).write_text(json.dumps(payload, indent=2, default=_json_number))
        result.files.append(out / name)
    for name, draw in (
        ("svd_error.png", lambda: svd_figure(svd)),
        ("ks_cdf.png", lambda: ks_figure(ks_values)),
        ("codecs.png", lambda: codec_figure(codecs)),
    ):
        figure = draw()
        if figure is not None:
            figure.savefig(out / name, dpi=110, bbox_inches="tight")
            plt.close(figure)
            result.files.append(out / name)


def _json_number(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def svd_figure(svd: pd.DataFrame):
    if svd.empty:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, column, title in ((axes[0], "E_r_S", "S = sign(W)"), (axes[1], "E_r_A", "A = |W|")):
        for label, rows in _limited(svd[svd.matrix == MEAN].groupby("source", sort=False)):
            style = "--" if str(label).endswith("/initial") else "-"  # Fig. 6: final weights
            axis.plot(rows.q, rows[column], style, marker="o", label=label)
        axis.set_xscale("log", base=2)
        axis.set(title=title, xlabel="rank ratio q = r/d", ylabel="E_r (layer mean)")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    figure.suptitle("Low-rank error of signs vs magnitudes (Fig. 2a, 6; C.3.4)")
    return figure


def ks_figure(ks_values: dict[str, probes.KsResult]):
    if not ks_values:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    baseline = next(iter(ks_values.values())).rademacher_values
    axis.plot(np.sort(baseline), np.linspace(0, 1, len(baseline)), "k--", label="Rademacher")
    for label, ks in _limited(ks_values.items()):
        values = np.sort(ks.sign_values)
        axis.plot(values, np.linspace(0, 1, len(values)), label=f"{label} (D={ks.statistic:.3f})")
    axis.set(xlabel="σ / √s", ylabel="pooled CDF", title="Sign spectra vs Rademacher (Fig. 2b)")
    axis.legend(fontsize=7)
    return figure


def codec_figure(codecs: pd.DataFrame):
    pooled = codecs[(codecs.matrix == POOLED) | (codecs.source == REFERENCE)]
    if pooled.empty:
        return None
    labels = [row.matrix if row.source == REFERENCE else row.source for row in pooled.itertuples()]
    table = pooled.assign(row=labels).pivot_table(index="row", columns="codec", values="ratio")
    figure, axis = plt.subplots(figsize=(1.0 + 0.8 * table.shape[1], 0.6 + 0.4 * len(table)))
    image = axis.imshow(table.values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    axis.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right", fontsize=7)
    axis.set_yticks(range(len(table)), table.index, fontsize=7)
    for (i, j), value in np.ndenumerate(table.values):
        axis.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=6, color="w")
    figure.colorbar(image, label="compressed / raw")
    axis.set_title("Sign bits through lossless codecs (Table 2)")
    return figure


def _limited(items) -> Iterator:
    for index, item in enumerate(items):
        if index >= 12:
            return
        yield item

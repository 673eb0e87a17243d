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
matrix, codec, bytes, ratio, paper_ratio, note; ``__pooled__`` rows per source and codec; Table
2's reference rows under source ``reference``: ``ratio`` is signlock's measurement of its own
reference field, ``paper_ratio`` the paper's printed value, ``note`` how the field was drawn),
``svd_error.png``, ``ks_cdf.png``, ``codecs.png`` (both ratios of each reference row). The
directory is created only when every source has been probed.

Every input is checked before any work, without loading it: a truncated, garbage or foreign file
is one line naming it (exit 2 for a file named on the command line, 1 for a run directory's
checkpoint), pickles are never unpickled beyond ``weights_only``, and a source whose tensors
(from a safetensors header or a checkpoint's zip records) exceed the memory this process may
still allocate (:func:`available_memory`) is refused. A source without matrix-shaped tensors is
an error (exit 2).

:func:`probe_paths` is ``signlock probe``'s workflow; the CLI logs the returned
:class:`~signlock.analysis.outputs.Outputs` on an MLflow run (nested under the sweep's parent run
when :func:`probed_sweep` finds that the paths name one sweep).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import resource
import struct
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from signlock.analysis import probes
from signlock.analysis.outputs import Outputs
from signlock.trainables.errors import (
    ConfigError,
    InputNotFoundError,
    SignlockError,
    UsageError,
)
from signlock.trainables.files import (
    UnreadableFileError,
    atomic_path,
    load_torch_file,
    write_csv,
    write_text,
)
from signlock.trainables.layout import RunDir, SweepDir
from signlock.trainables.sharded import consolidated_model_state

if TYPE_CHECKING:
    from signlock.analysis.sweep_data import Sweep

NamedTensors = list[tuple[str, torch.Tensor]]
CODEC_COLUMNS = (
    "source", "matrix", "codec", "compressed_bytes", "raw_bytes", "ratio", "paper_ratio", "note",
)  # fmt: skip
POOLED = "__pooled__"
MEAN = "__mean__"
REFERENCE = "reference"


@dataclass(frozen=True)
class ProbeSource:
    """One probed weight set: ``check`` validates its files without loading them and returns the
    bytes ``load`` would read into memory; ``path`` is what its errors name."""

    label: str
    path: Path
    load: Callable[[], NamedTensors]
    check: Callable[[], int]


class UnreadableInputError(UsageError):
    """A weights file named on the command line is truncated, garbage or holds Python objects
    (one line naming it, exit 2)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = path
        super().__init__(f"unreadable file {path}: {reason}")


class NoMatricesError(UsageError):
    def __init__(self, path: object, note: str = "") -> None:
        self.path = path
        super().__init__(f"no matrix-shaped tensors in {path}{note}")


class NotEnoughMemoryError(SignlockError):
    def __init__(self, path: object, needed: int, available: int) -> None:
        super().__init__(
            f"{path} would load {needed / GIB:.2f} GiB of tensors, more than the "
            f"{available / GIB:.2f} GiB of memory available; probe it on a larger machine"
        )


@contextlib.contextmanager
def named_input() -> Iterator[None]:
    """A file the user named: unreadable is a usage error (exit 2), not a failure (exit 1)."""
    try:
        yield
    except UnreadableFileError as error:
        raise UnreadableInputError(error.path, error.reason) from None


# ---- file formats (read without loading) ------------------------------------------------------

GIB = 1 << 30
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_HEADER_LIMIT = 100 << 20  # safetensors' own limit on the JSON header
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_TORCH_MAGIC = b"\x80\x02"  # pickle protocol 2: torch.save's pre-1.6 format
TORCH_STORAGE = re.compile(r"(^|/)data/\d+$")


def safetensors_data_bytes(path: Path) -> int:
    """The tensor bytes a safetensors file holds, from its header alone (8-byte little-endian
    length, then JSON); a truncated or garbage file is one line naming it."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise UnreadableFileError(path, "too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(size - 8, SAFETENSORS_HEADER_LIMIT):
            raise UnreadableFileError(path, "truncated or not a safetensors file (header length)")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise UnreadableFileError(path, "not a safetensors file (header is not JSON)") from None
    end = _safetensors_extent(path, header)
    if 8 + length + end > size:
        held = size - 8 - length
        reason = f"truncated: its header describes {end} bytes of tensors, it holds {held}"
        raise UnreadableFileError(path, reason)
    return end


def _safetensors_extent(path: Path, header: object) -> int:
    if not isinstance(header, dict):
        raise UnreadableFileError(path, "not a safetensors file (header is not a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        valid = isinstance(offsets, list) and len(offsets) == 2
        if not valid or not all(isinstance(v, int) and v >= 0 for v in offsets):
            raise UnreadableFileError(path, f"not a safetensors file (entry {name!r})")
        if offsets[1] < offsets[0]:
            raise UnreadableFileError(path, f"not a safetensors file (entry {name!r})")
        end = max(end, offsets[1])
    return end


def torch_file_bytes(path: Path) -> int:
    """The tensor bytes ``torch.load`` would read from a checkpoint (its zip's storage records;
    the file's size for the legacy format); anything else is one line naming the file."""
    with path.open("rb") as handle:
        magic = handle.read(4)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            raise UnreadableFileError(path, f"truncated torch checkpoint ({error})") from None
        return sum(info.file_size for info in infos if TORCH_STORAGE.search(info.filename))
    if magic == ZIP_MAGIC:
        raise UnreadableFileError(path, "truncated torch checkpoint (its zip directory is missing)")
    if magic.startswith(LEGACY_TORCH_MAGIC):
        return path.stat().st_size
    raise UnreadableFileError(path, "neither a torch checkpoint nor a safetensors file")


def is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    try:
        safetensors_data_bytes(path)
    except UnreadableFileError:
        return False
    return True


def available_memory() -> int | None:
    """Bytes this process may still allocate: the least of MemAvailable, what RLIMIT_AS leaves
    above the current address space and what the cgroup leaves (None: none of them known)."""
    known = [v for v in (_mem_available(), _address_space_left(), _cgroup_left()) if v is not None]
    return min(known) if known else None


def _proc_field(path: str, name: str) -> int | None:
    """A ``Name:   123 kB`` field of a /proc file, in bytes."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1]) * 1024
    return None


def _mem_available() -> int | None:
    return _proc_field("/proc/meminfo", "MemAvailable")


def _address_space_left() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    used = _proc_field("/proc/self/status", "VmSize")
    if soft == resource.RLIM_INFINITY or used is None:
        return None
    return max(0, soft - used)


def _cgroup_left() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            return max(0, int(limit) - used)
    return None


# ---- sources ----------------------------------------------------------------------------------


def is_run_directory(path: Path) -> bool:
    files = RunDir(path)
    return files.config.is_file() and files.checkpoint.is_file()


def checkpoint_weights(path: Path) -> NamedTensors:
    state = _load_checkpoint(path)
    if isinstance(state, dict) and "state_dir" in state:  # a sharded trial's: consolidate it
        state = consolidated_model_state(path, state)
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError("PATH", str(path), "a state_dict (a mapping of names to tensors)")
    return [(k, v) for k, v in state.items() if isinstance(v, torch.Tensor)]


def _load_checkpoint(path: Path) -> object:
    torch_file_bytes(path)
    try:
        return load_torch_file(path, map_location="cpu")
    except (KeyError, IndexError, TypeError, AttributeError, struct.error) as error:
        # torch's restricted unpickler meets garbage with errors load_torch_file does not expect
        reason = f"not a torch checkpoint ({type(error).__name__})"
        raise UnreadableFileError(path, reason) from None


def safetensors_weights(paths: list[Path]) -> NamedTensors:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights: NamedTensors = []
    for path in sorted(paths):
        safetensors_data_bytes(path)
        try:
            weights += list(load_file(str(path)).items())
        except SafetensorError as error:
            raise UnreadableFileError(path, f"not a safetensors file ({error})") from None
    return weights


def initial_weights(run_dir: Path) -> NamedTensors:
    """The weights the trial started from, rebuilt as its constructor built them (same seed,
    same device kind: CUDA draws differ from CPU draws)."""
    from signlock.trainables.trainer import Trial, load_run_config

    cfg = load_run_config(run_dir)
    summary_path = RunDir(run_dir).summary
    if summary_path.is_file():
        device = json.loads(summary_path.read_text()).get("device") or cfg.device
        cfg = cfg.with_overrides({"device": "cuda" if str(device).startswith("cuda") else "cpu"})
    trial = Trial(cfg, run_dir, progress=False)
    return [(k, v.detach().cpu()) for k, v in trial.model.state_dict().items()]


def run_sources(run_dir: Path, label: str) -> list[ProbeSource]:
    final = RunDir(run_dir).checkpoint

    def size() -> int:  # the model alone is at most its checkpoint
        return torch_file_bytes(final)

    return [
        ProbeSource(f"{label}/initial", run_dir, lambda: initial_weights(run_dir), size),
        ProbeSource(f"{label}/final", final, lambda: checkpoint_weights(final), size),
    ]


def file_source(path: Path, label: str) -> ProbeSource:
    """A weights file named on the command line: its errors are usage errors (exit 2)."""

    def load() -> NamedTensors:
        with named_input():
            if is_safetensors(path):
                return safetensors_weights([path])
            return checkpoint_weights(path)

    def check() -> int:
        with named_input():
            return safetensors_data_bytes(path) if is_safetensors(path) else torch_file_bytes(path)

    return ProbeSource(label, path, load, check)


def shards_source(directory: Path, shards: list[Path]) -> ProbeSource:
    def load() -> NamedTensors:
        with named_input():
            return safetensors_weights(shards)

    def check() -> int:
        with named_input():
            return sum(safetensors_data_bytes(shard) for shard in shards)

    return ProbeSource(directory.name, directory, load, check)


def resolve_sources(path_text: str, storage: Path) -> list[ProbeSource]:
    """The probed weight sets of one PATH argument (one-line ConfigError when it is none)."""
    path = Path(path_text)
    if path.is_dir() and is_run_directory(path):
        return run_sources(path, path.name)
    if path.is_dir() and sorted(path.glob("*.safetensors")):
        return [shards_source(path, sorted(path.glob("*.safetensors")))]
    if path.is_file():
        return [file_source(path, path.stem)]
    if path.suffix in WEIGHT_SUFFIXES:
        raise InputNotFoundError(path_text)
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
    sweep_files = SweepDir(sweep.directory)
    return [
        source
        for trial in sweep.trials["name"]
        if is_run_directory(sweep_files.run(trial).path)
        for source in run_sources(sweep_files.run(trial).path, trial)
    ]


def check_sources(sources: list[ProbeSource]) -> None:
    """Every source's files readable and small enough to load (one at a time) before any work."""
    sizes = [(source.check(), source.path) for source in sources]
    available = available_memory()
    for needed, path in sizes:
        if available is not None and needed > available:
            raise NotEnoughMemoryError(path, needed, available)


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
    named = source.load()
    matrices = probes.extract_matrices(named, options.excluded)
    if not matrices:
        raise NoMatricesError(source.path, _exclusion_note(named, options.excluded))
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


def _exclusion_note(named: NamedTensors, excluded: tuple[str, ...]) -> str:
    if any(probes.as_matrix(tensor) is not None for _, tensor in named):
        return f" outside --exclude ({', '.join(excluded)})"
    return ""


def probe_paths(paths: Sequence[str], storage: Path, out: Path, options: ProbeOptions) -> Outputs:
    """``signlock probe``: the weights of every PATH argument (sweeps by name under
    ``storage``) probed into ``out`` (:func:`run_probe`)."""
    sources = [source for path in paths for source in resolve_sources(path, storage)]
    if not sources:
        raise ConfigError("PATH", " ".join(paths), "weights to probe (no finished trial)")
    return run_probe(sources, out, options)


def probed_sweep(paths: Sequence[str], storage: Path) -> Sweep | None:
    """The sweep that ``paths`` name when they name exactly one (its probe's MLflow run nests
    under the sweep's parent run), else None."""
    from signlock.analysis.sweep_data import load_sweep

    if len(paths) == 1 and not Path(paths[0]).is_file():
        with contextlib.suppress(SignlockError, FileNotFoundError):
            return load_sweep(paths[0], storage)
    return None


def run_probe(sources: list[ProbeSource], out: Path, options: ProbeOptions) -> Outputs:
    """Probe every source; write the tables, JSON and figures into ``out`` (created only once
    every source has been probed, so a failed probe leaves nothing behind), with each source's
    headline numbers as metrics."""
    check_sources(sources)
    metrics: dict[str, float] = {}
    svd, codecs = [], []
    ks_all, entropy_all, ks_values = {}, {}, {}
    # A bar on terminals only, closed (and erased) before an error's one line is printed.
    with tqdm(sources, desc="probe", unit="source", leave=False, disable=None) as bar:
        for source in bar:
            rows, ks_json, entropy_json, codec_rows, ks = probe_one(source, options)
            svd += rows
            codecs += codec_rows
            ks_all[source.label] = ks_json
            entropy_all[source.label] = entropy_json
            if ks is not None:
                ks_values[source.label] = ks
            metrics.update(source_metrics(source.label, ks_json, entropy_json, codec_rows))
    if options.references:
        codecs += reference_rows()
    table = pd.DataFrame(codecs).reindex(columns=CODEC_COLUMNS)
    files = write_outputs(out, pd.DataFrame(svd), ks_all, entropy_all, table, ks_values)
    return Outputs(out, tuple(files), metrics)


def reference_rows() -> list[dict[str, object]]:
    """Table 2's reference fields as signlock draws and measures them (``ratio``), beside the
    paper's printed ratio (``paper_ratio``) and how the field was drawn (``note``)."""
    rows = []
    for name, field_of in probes.REFERENCE_FIELDS.items():
        signs = field_of()
        note = probes.reference_note(name, signs)
        rows += [
            {"source": REFERENCE, **row, "paper_ratio": probes.paper_ratio(name, row["codec"]),
             "note": note}
            for row in probes.codec_rows(name, signs)
        ]  # fmt: skip
    return rows


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
    out: Path,
    svd: pd.DataFrame,
    ks: dict,
    entropy: dict,
    codecs: pd.DataFrame,
    ks_values: dict[str, probes.KsResult],
) -> list[Path]:
    """The tables, JSON and figures into ``out``; the files written, in order."""
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for name, frame in (("svd_error.csv", svd), ("codecs.csv", codecs)):
        write_csv(frame, out / name)
        files.append(out / name)
    for name, payload in (("ks.json", ks), ("entropy.json", entropy)):
        write_text(out / name, json.dumps(payload, indent=2, default=_json_number))
        files.append(out / name)
    for name, draw in (
        ("svd_error.png", lambda: svd_figure(svd)),
        ("ks_cdf.png", lambda: ks_figure(ks_values)),
        ("codecs.png", lambda: codec_figure(codecs)),
    ):
        figure = draw()
        if figure is not None:
            with atomic_path(out / name) as tmp:
                figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
            plt.close(figure)
            files.append(out / name)
    return files


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
    """Pooled ratios per source and codec; each Table 2 reference row twice, as signlock
    measures it and as the paper prints it, with how signlock drew it in a note."""
    cells, notes = codec_cells(codecs)
    if cells.empty:
        return None
    table = cells.pivot_table(
        index="row", columns="codec", values="ratio", aggfunc="mean", dropna=False, sort=False
    )
    figure, axis = plt.subplots(figsize=(3.0 + 0.8 * table.shape[1], 1.0 + 0.4 * len(table)))
    cmap = plt.get_cmap(CODEC_CMAP).with_extremes(bad="0.85")
    image = axis.imshow(table.values, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    axis.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right", fontsize=7)
    axis.set_yticks(range(len(table)), table.index, fontsize=7)
    for (i, j), value in np.ndenumerate(table.values):
        text = "–" if math.isnan(value) else f"{value:.3f}"
        color = text_color(cmap(image.norm(value)) if not math.isnan(value) else (0.85,) * 3)
        axis.text(j, i, text, ha="center", va="center", fontsize=6, color=color)
    figure.colorbar(image, label="compressed / raw")
    printed = any(str(row).startswith(PRINTED) for row in table.index)
    axis.set_title(CODEC_TITLE + (": signlock measured, paper printed" if printed else ""))
    if notes:  # as the x label, so it sits below the rotated codec names
        axis.set_xlabel("\n".join(notes), fontsize=7, loc="left")
    return figure


CODEC_CMAP = "viridis"
CODEC_TITLE = "Sign bits through lossless codecs (Table 2)"
MEASURED, PRINTED = "signlock: ", "paper: "


def codec_cells(codecs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(row, codec, ratio) cells of the codec figure, and the notes of its starred rows."""
    pooled = codecs[codecs.matrix == POOLED]
    cells = [pooled.assign(row=pooled.source)[["row", "codec", "ratio"]]]
    notes = []
    reference = codecs[codecs.source == REFERENCE]
    for name, rows in reference.groupby("matrix", sort=False):
        note = next((str(n) for n in rows.note if isinstance(n, str) and n), "")
        star = " " + "*" * (len(notes) + 1) if note else ""
        if note:
            notes.append(f"{star.strip()} {note}")
        cells.append(rows.assign(row=f"{MEASURED}{name}{star}")[["row", "codec", "ratio"]])
        printed = rows.assign(row=f"{PRINTED}{name}", ratio=rows.paper_ratio)
        if printed.ratio.notna().any():
            cells.append(printed[["row", "codec", "ratio"]])
    return pd.concat(cells, ignore_index=True), notes


def text_color(background: tuple[float, ...]) -> str:
    """Dark text on light cells, white on dark ones (by the cell's relative luminance)."""
    return "black" if relative_luminance(background) > DARK_TEXT_LUMINANCE else "white"


DARK_TEXT_LUMINANCE = 0.179  # where black and white text have equal WCAG contrast


def relative_luminance(color: tuple[float, ...]) -> float:
    """WCAG 2's relative luminance of an sRGB colour."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in color[:3]]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _limited(items) -> Iterator:
    for index, item in enumerate(items):
        if index >= 12:
            return
        yield item

"""``signlock report``: one self-contained HTML page of a sweep — its spec, trial states, the
analysis tables and every figure (embedded as data URIs: no network, no side files), with links
to each trial's MLflow run. A sweep with finished trials but no analysis yet is analysed
first."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from signlock.analysis.analyze import Publish, run_analysis
from signlock.analysis.outputs import Outputs
from signlock.analysis.sweep_data import POOLED, Sweep, read_parquet_file, restore_integers
from signlock.trainables.files import UnreadableFileError, atomic_path
from signlock.trainables.layout import SweepDir

REPORT_NAME = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .muted { color: #666; }
table { border-collapse: collapse; font-size: 0.8rem; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.45rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.scroll { overflow-x: auto; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.8rem; overflow-x: auto; font-size: 0.75rem; }
"""
# Filled in by the browser once the page has loaded: how many figures actually rendered.
RENDER_CHECK = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const shown = images.filter((image) => image.complete && image.naturalWidth > 0).length;
  document.getElementById("render-check").textContent =
    `${shown}/${images.length} figures rendered`;
});
"""


def _table(frame: pd.DataFrame, links: Mapping[str, str] | None = None) -> str:
    if frame.empty:
        return "<p class='muted'>(none)</p>"
    shown = frame.copy()
    for column in shown.columns:  # integers stay integers; a missing value is an empty cell
        if shown[column].dtype.kind != "f":
            values = shown[column].astype(object)
            shown[column] = values.where(values.notna(), "")
    if links and "name" in shown:
        shown["name"] = [
            f"<a href='{html.escape(links[n])}'>{html.escape(n)}</a>" if n in links else n
            for n in shown["name"]
        ]
    table = shown.to_html(
        index=False, escape=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0
    )
    return f"<div class='scroll'>{table}</div>"


def _figures(directory: Path) -> str:
    parts = []
    for path in sorted(directory.glob("*.png")):
        data = base64.b64encode(path.read_bytes()).decode()
        title = path.stem.replace("_", " ")
        parts.append(
            f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption class='muted'>{html.escape(path.name)}</figcaption></figure>"
        )
    return "\n".join(parts)


def _read(directory: Path, stem: str) -> pd.DataFrame:
    """An analysis table: its Parquet copy (which keeps every column's type), else its CSV."""
    parquet, csv = directory / f"{stem}.parquet", directory / f"{stem}.csv"
    if parquet.exists():
        return read_parquet_file(parquet)
    return _read_csv(csv) if csv.exists() else pd.DataFrame()


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV table with its counts and integer config fields as integers (a column with gaps
    reads back as floats), or one line naming the file."""
    try:
        return restore_integers(pd.read_csv(path))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise UnreadableFileError(path, f"not a readable CSV table ({lines[0][:200]})") from None


def _compression_section(directory: Path) -> list[str]:
    """``signlock compress``'s curves and its seed means per method and budget, when run."""
    table_path = directory / "compression.parquet"
    if not table_path.exists():
        return []
    table = read_parquet_file(table_path)
    reached = table[table["status"] == "ok"]
    means = reached.groupby(["method", "bpw_target"], as_index=False).agg(
        bpw_eff=("bpw_eff", "mean"), metric=("metric", "mean"), seeds=("seed", "nunique")
    )
    unreached = table[table["status"] != "ok"][["trial", "method", "bpw_target", "status"]]
    return [
        "<h2>Compression (performance vs bits per weight, Fig. 20)</h2>",
        _figures(directory),
        _table(means),
        "<h3>Budgets not reached</h3>",
        _table(unreached),
    ]


def render_report(sweep: Sweep, analysis_dir: Path, trial_links: Mapping[str, str]) -> str:
    """The HTML of the report (``trial_links``: trial name → URL of its MLflow run)."""
    sweep_files = SweepDir(sweep.directory)
    trials_csv = sweep_files.trials_csv
    trials = _read_csv(trials_csv) if trials_csv.exists() else sweep.trials
    lockin = _read(analysis_dir, "lockin")
    pooled = lockin[lockin["tensor"] == POOLED] if "tensor" in lockin else lockin
    title = f"signlock sweep {sweep.name}"
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='muted'>{len(sweep.trials)} of {sweep.n_planned} trials finished · "
        f"{html.escape(str(sweep.directory))} · made {made}</p>",
        "<h2>Trials</h2>",
        _table(trials, trial_links),
        "<h2>Lock-in statistics (pooled K, C.4.2)</h2>",
        _table(pooled),
        "<h2>Seed averages per grid point</h2>",
        _table(_read(analysis_dir, "seeds")),
        "<h2>Pareto set</h2>",
        _table(_read(analysis_dir, "pareto")),
        "<h2>Figures</h2>",
        _figures(analysis_dir),
        *_compression_section(sweep_files.compression),
        "<h2>Spec</h2>",
        f"<pre>{html.escape(json.dumps(sweep.record.context.spec, indent=2))}</pre>",
        "<p id='render-check' class='muted'></p>",
    ]
    body = "\n".join(sections)
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"<script>{RENDER_CHECK}</script></head><body>{body}</body></html>"
    )


def write_report(
    sweep: Sweep, trial_links: Mapping[str, str], *, publish: Publish | None = None
) -> Outputs:
    """``<sweep>/analysis/report.html``; a sweep with finished trials but no analysis yet is
    analysed first (:func:`~signlock.analysis.analyze.run_analysis`, which hands ``publish`` its
    outputs)."""
    analysis_dir = SweepDir(sweep.directory).analysis
    if len(sweep.trials) and not (analysis_dir / "seeds.csv").exists():
        run_analysis(sweep, publish=publish)
    path = analysis_dir / REPORT_NAME
    page = render_report(sweep, analysis_dir, trial_links)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Outputs(analysis_dir, (path,), {})

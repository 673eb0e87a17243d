"""`signlock compress` refuses unknown ``--targets`` in one line before any Ray task (checked
against each trial's model built from its config.json), and its figure's log axis reads as
plain numbers (48, not 4.8×10¹)."""

from __future__ import annotations

import re
import time

import pandas as pd
import pytest

from signlock.analysis.compression import COLUMNS, compression_figure
from tests.analysis.test_probe_command import compression_smoke  # noqa: F401 (a fixture)
from tests.orchestrator.test_cli import run_cli
from tests.orchestrator.test_user_errors import one_line_error


@pytest.mark.slow
def test_unknown_targets_are_refused_before_any_ray_task(compression_smoke):  # noqa: F811
    root = compression_smoke
    compression = root / "signlock-runs" / "sweeps" / "compression-smoke" / "compression"
    targets = "blocks.0.attn.q.weight,blocks.9.attn.q.weight"
    start = time.monotonic()
    result = run_cli(
        "compress", "compression-smoke", "--targets", targets, "--methods", "svd-w", "--bpw", "0.5",
        cwd=root,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert result.returncode == 2
    line = one_line_error(result)
    assert "--targets='blocks.9.attn.q.weight'" in line and "blocks.1.mlp.fc2.weight" in line
    assert not compression.exists()  # no table, no ray.log: Ray never started
    assert elapsed < 60, elapsed


def ppl_table(values: list[float]) -> pd.DataFrame:
    rows = [
        {"trial": "t0", "seed": 0, "method": "svd-w", "bpw_target": b, "bpw_eff": b,
         "sign_bits": 0, "value_bits": 0, "index_bits": 0, "side_bits": 0, "weights": 1,
         "metric_name": "val_ppl", "metric": v, "status": "ok"}
        for b, v in zip((0.25, 0.5, 1.0, 2.0), values, strict=False)
    ]  # fmt: skip
    rows.append({**rows[0], "method": "uncompressed", "bpw_target": 0.0, "metric": min(values)})
    return pd.DataFrame(rows, columns=list(COLUMNS))


@pytest.mark.parametrize("values", [[48.0, 44.0, 41.0, 39.0], [3.0, 30.0, 300.0, 2.0]])
def test_the_perplexity_axis_is_labelled_with_plain_numbers(values):
    figure = compression_figure(ppl_table(values), {"t0": "a_init=0.02"})
    figure.canvas.draw()
    axis = figure.axes[0]
    assert axis.get_yscale() == "log"
    labels = [
        label.get_text()
        for minor in (False, True)
        for label in axis.get_yticklabels(minor=minor)
        if label.get_text() and axis.get_ylim()[0] <= label.get_position()[1] <= axis.get_ylim()[1]
    ]
    assert labels, "no labelled ticks"
    for text in labels:
        assert re.fullmatch(r"\d+(\.\d+)?", text), labels  # no 10^x, ×, $\mathdefault$
    numbers = [float(text) for text in labels]
    assert any(min(values) <= n <= max(values) for n in numbers), labels

"""RunDir and SweepDir own every file name of a run and a sweep directory: no other product
module spells one (string constants outside docstrings, found by parsing every module)."""

from __future__ import annotations

import ast
from pathlib import Path

from signlock.trainables.layout import FLIPS, SUMMARIES, TENSOR_METRICS, RunDir, SweepDir

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("orchestrator", "analysis", "cluster", "search_spaces", "trainables")
LAYOUT = ROOT / "trainables" / "layout.py"


def layout_names() -> set[str]:
    """Every file and folder name the two layout objects hand out."""
    run, sweep = RunDir(Path("r")), SweepDir(Path("s"))
    paths = [
        *run.logged_files(), run.checkpoint, run.previous_checkpoint, run.checkpoints,
        run.trial_state, run.scheduler_state, run.attempts, run.diverged_marker, run.array_error,
        sweep.record, sweep.runs, sweep.trials_csv, sweep.pareto_csv, sweep.ray_log,
        sweep.driver_lock, sweep.analysis, sweep.compression, sweep.slurm,
    ]  # fmt: skip
    return {path.name for path in paths} | {FLIPS, SUMMARIES, TENSOR_METRICS}


# Words that are also something else: the backend named "slurm" and submitit's cluster="slurm";
# the "compression" sweep preset; MLflow artifact paths named like the folders they mirror.
OTHER_MEANINGS = {"slurm", "compression", "analysis"}
# The same name for a file of another directory: (module, name) -> which file it is.
ELSEWHERE = {
    ("analysis/analyze.py", "pareto.csv"): "analysis/pareto.csv, the analysis's Pareto table",
    ("analysis/compression.py", "ray.log"): "compression/ray.log, the compress tasks' Ray output",
}


def docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def literals(path: Path, names: set[str]) -> list[str]:
    """``file:line: 'name'`` for every string constant in ``names`` outside docstrings."""
    tree = ast.parse(path.read_text())
    skip = docstrings(tree)
    return [
        f"{path.name}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and id(node) not in skip and node.value in names
    ]


def test_no_module_but_the_layout_spells_a_run_or_sweep_directory_name():
    names = layout_names() - OTHER_MEANINGS
    assert {"latest.pt", "runs", "checkpoints", "signlock-sweep.json", "trials.csv"} <= names
    modules = [p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))]
    found = [
        f"{path.parent.name}/{hit}"
        for path in modules
        if path != LAYOUT
        for hit in literals(path, names)
        if (f"{path.parent.name}/{path.name}", hit.rsplit(": ", 1)[1].strip("'")) not in ELSEWHERE
    ]
    assert not found, "\n".join(found)


def test_the_scan_finds_a_planted_literal(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('"""A docstring naming runs is fine."""\nPATH = "runs"\n')
    assert literals(planted, layout_names()) == ["planted.py:2: 'runs'"]

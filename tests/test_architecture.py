"""The layer contract of ARCHITECTURE.md, checked by import-linter (``[tool.importlinter]`` in
pyproject.toml) on the real package, and shown to fail on a deliberately backward import."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("orchestrator", "analysis", "cluster", "search_spaces", "trainables")


def lint_imports(
    cwd: Path, python_path: list[Path], *, isolated: bool
) -> subprocess.CompletedProcess:
    """``lint-imports`` on pyproject.toml in ``cwd``. ``isolated``: ``python -S`` with only
    ``python_path`` (no .pth files, so the editable install's finder cannot map ``signlock``
    back to the working tree)."""
    code = "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()"
    command = [sys.executable, *(["-S"] if isolated else []), "-c", code, "--no-cache"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(str(p) for p in python_path)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def copy_of_the_package(tmp_path: Path) -> Path:
    """signlock laid out as an importable namespace package under ``tmp_path/src``."""
    package = tmp_path / "src" / "signlock"
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, package / folder, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path / "src"


def test_the_package_keeps_every_contract():
    result = lint_imports(ROOT, [], isolated=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


def test_a_backward_import_breaks_the_layer_contract(tmp_path):
    source = copy_of_the_package(tmp_path)
    site_packages = [Path(p) for p in site.getsitepackages()]
    kept = lint_imports(tmp_path, [source, *site_packages], isolated=True)
    assert kept.returncode == 0, kept.stdout[-3000:]  # the copy alone keeps them all

    # a trial module reaching up into the orchestrator, and analysis importing MLflow
    (source / "signlock" / "trainables" / "backward.py").write_text(
        "from signlock.orchestrator import sweep\n"
    )
    (source / "signlock" / "analysis" / "logs_itself.py").write_text("import mlflow\n")
    broken = lint_imports(tmp_path, [source, *site_packages], isolated=True)
    assert broken.returncode == 1, broken.stdout[-3000:]
    report = broken.stdout
    assert "signlock.trainables.backward -> signlock.orchestrator.sweep" in report
    assert "signlock.analysis.logs_itself -> mlflow" in report
    assert "Folders are layers: each imports only the folders below it BROKEN" in report

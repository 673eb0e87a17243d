"""Every command example of README.md runs as written (in a temporary directory, smoke sizes), so
the documentation cannot rot: the set-up demo, the --set example, the error example and the
whole Sweeps block, including the UI it starts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_readme_and_ci import readme_command

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SIGNLOCK = [sys.executable, "-m", "signlock.orchestrator.cli"]


def signlock(command: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    words = shlex.split(command, comments=True)
    assert words[0] == "signlock", command
    return subprocess.run(
        [*SIGNLOCK, *words[1:]], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def sweeps_block() -> list[str]:
    match = re.search(r"## Sweeps\n.*?```bash\n(.+?)\n```", README, flags=re.DOTALL)
    assert match, "README has no bash block under '## Sweeps'"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_the_set_up_demo_trains_on_embedded_defaults(tmp_path):
    demo = readme_command("Set-up command").split("&&")[-1].strip()
    assert demo == "signlock train --preset synthetic-smoke"
    result = signlock(f"{demo} --quiet", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "signlock-runs" / "synthetic-smoke" / "summary.json").is_file()


def test_the_set_example_of_the_command_table(tmp_path):
    example = re.search(r"e\.g\. `(--set optim\.lr=1e-3 --set init\.a_init=0\.02)`", README)
    assert example, "the --set example moved; update this test"
    result = signlock(
        f"signlock train --preset synthetic-smoke --steps 50 --quiet {example.group(1)}", tmp_path
    )
    assert result.returncode == 0, result.stderr
    config = (tmp_path / "signlock-runs" / "synthetic-smoke" / "config.json").read_text()
    assert '"lr": 0.001' in config and '"a_init": 0.02' in config


def test_the_error_example_is_what_the_command_prints(tmp_path):
    shown = re.search(r"e\.g\. `(signlock: error: invalid regularizer\.lam=-0\.1: [^`]+)`", README)
    assert shown, "the error example moved; update this test"
    command = "signlock train --preset synthetic-smoke --set regularizer.lam=-0.1"
    result = signlock(command, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == shown.group(1)


@pytest.mark.slow
def test_the_sweeps_block_runs_as_written(tmp_path):
    commands = sweeps_block()
    assert [shlex.split(c)[1] for c in commands] == ["plan", "sweep", "status", "query", "ui"]
    *batch, ui = commands
    outputs = {}
    for command in batch:
        result = signlock(command, tmp_path)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        outputs[shlex.split(command)[1]] = result.stdout
    assert "sweep enhancement-smoke: 3 trials" in outputs["plan"]
    assert "terminated 3" in outputs["status"]
    header, *rows = outputs["query"].strip().splitlines()
    a_init = header.split(",").index("params.init.a_init")
    assert [float(row.split(",")[a_init]) for row in rows] == [0.02]  # the one gap > 0.01
    assert_ui_serves(ui, tmp_path)


def assert_ui_serves(command: str, cwd: Path) -> None:
    url = re.search(r"# (http://\S+)", command).group(1)
    words = shlex.split(command, comments=True)
    server = subprocess.Popen([*SIGNLOCK, *words[1:]], cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    assert response.status == 200
                    return
            except OSError:
                assert server.poll() is None, "signlock ui exited"
                assert time.monotonic() < deadline, f"{url} did not answer"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)


def slurm_block() -> list[str]:
    match = re.search(r"## On SLURM\n.*?```bash\n(.+?)\n```", README, flags=re.DOTALL)
    assert match, "README has no bash block under '## On SLURM'"
    return [line for line in match.group(1).splitlines() if line.strip()]


@pytest.mark.slow
def test_the_slurm_block_runs_against_a_real_slurm(tmp_path, local_slurm):
    sweep, status, cancel, resume, logs = slurm_block()
    assert f"--partition {local_slurm}" in sweep
    submitted = signlock(sweep, tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.startswith("submitted SLURM job")
    shown = signlock(status, tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith("SLURM job"), shown.stderr
    stopped = signlock(cancel, tmp_path)
    assert stopped.returncode == 0 and "cancelled SLURM job" in stopped.stdout, stopped.stderr
    finished = signlock(resume, tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "completed" in finished.stderr and "Pareto set" in finished.stdout
    printed = signlock(logs, tmp_path)
    assert printed.returncode == 0 and "Job completed successfully" in printed.stdout


def section_block(section: str, language: str) -> str:
    match = re.search(rf"## {section}\n.*?```{language}\n(.+?)\n```", README, flags=re.DOTALL)
    assert match, f"README has no {language} block under '## {section}'"
    return match.group(1)


@pytest.mark.slow
def test_the_analysis_block_and_the_notebook_snippet_run(tmp_path):
    swept = signlock("signlock sweep enhancement-smoke --quiet", tmp_path)
    assert swept.returncode == 0, swept.stderr
    for line in section_block("Analysing a sweep", "bash").splitlines():
        result = signlock(line, tmp_path)
        assert result.returncode == 0, (line, result.stderr)
    analysis = tmp_path / "signlock-runs" / "sweeps" / "enhancement-smoke" / "analysis"
    assert (analysis / "report.html").is_file() and (analysis / "pareto.png").is_file()
    snippet = section_block("Analysing a sweep", "python")
    result = subprocess.run([sys.executable, "-c", snippet + "\nprint('ok')"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / image).is_file(), image


@pytest.mark.slow
def test_the_compression_block_runs_as_written(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"layers.0.mlp.weight": torch.randn(256, 128)}, tmp_path / "model.safetensors")
    for line in section_block("Compression and the one-bit wall", "bash").splitlines():
        result = signlock(line, tmp_path)
        assert result.returncode == 0, (line, result.stderr[-3000:])
    sweep = tmp_path / "signlock-runs" / "sweeps" / "compression-smoke"
    assert (sweep / "compression" / "compression.parquet").is_file()
    probes = tmp_path / "signlock-runs" / "probes"
    assert (probes / "compression-smoke" / "codecs.csv").is_file()
    assert (probes / "my-model" / "svd_error.csv").is_file()


def test_the_full_tracking_plan_example_fits_the_12_9b_model_on_141_gb(tmp_path):
    shown = re.search(r"\(`(signlock plan scale --set tracker\.sample_per_tensor=null)`", README)
    assert shown, "the full-tracking plan example moved; update this test"
    result = signlock(shown.group(1), tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    largest = result.stdout.split(" per trial (")[-1]  # the last memory plan: scale-12.9b's
    assert "scale-12.9b (" in result.stdout.split(" per trial (")[-2].splitlines()[-1]
    assert "sign tracker: 12,885,696,512 scalars, 24.00 GiB on a GPU" in largest
    assert "fits GPUs of: 141 GB\n" in largest


def several_devices_block() -> list[str]:
    match = re.search(r"## Trials over several devices\n.*?```bash\n(.+?)\n```", README, re.DOTALL)
    assert match, "README has no bash block under '## Trials over several devices'"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_the_several_devices_block_plans_trains_on_two_workers_and_resumes_on_one(tmp_path):
    plan, two_workers, one_worker = several_devices_block()
    planned = signlock(plan, tmp_path, timeout=300)
    assert planned.returncode == 0, planned.stderr  # --gpu-memory 80GB: every model fits
    assert "scale-12.9b" in planned.stdout and "2 FSDP workers per trial" in planned.stdout
    trained = signlock(two_workers, tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert '"device": "cpu x2"' in trained.stdout and '"steps": 20' in trained.stdout
    resumed = signlock(one_worker, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "from step 20 on 1 workers" in resumed.stderr
    assert '"device": "cpu x1"' in resumed.stdout and '"steps": 20' in resumed.stdout


def test_the_workers_table_is_the_planners():
    from signlock.search_spaces.memory import estimate_memory
    from signlock.search_spaces.plan import vocab_size
    from signlock.search_spaces.presets import trial_preset
    from signlock.trainables.families.gpt import SCALE_CONFIGS

    rows = re.findall(r"^\| `(scale-[^`]+)`(?: to `(scale-[^`]+)`)? \| (.+) \|$", README, re.M)
    assert rows, "the workers table moved; update this test"
    names = [name for name in SCALE_CONFIGS if name != "scale-debug"]
    covered = []
    for first, last, cells in rows:
        span = names[names.index(first) : names.index(last or first) + 1]
        wanted = [int(c) for c in cells.split(" | ")]
        for name in span:
            cfg = trial_preset(name)
            estimate = estimate_memory(cfg, vocab_size(cfg))
            assert [estimate.workers_needed(gb) for gb in (24, 40, 80, 141)] == wanted, name
        covered += span
    assert covered == names

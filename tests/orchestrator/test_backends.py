"""Backends behind one protocol: the registry, flags generated from the request dataclass, and
the record's ``{backend, request, jobs}`` (old records with a ``slurm`` section still read)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from signlock.cluster.slurm_request import SlurmRequest
from signlock.orchestrator.backends import BACKENDS, backend_for, backend_of
from signlock.orchestrator.cli import build_parser, main
from signlock.orchestrator.commands.flags import flag_name, request_from_args
from signlock.trainables.errors import ConfigError
from signlock.trainables.records import Submission, SweepContext, SweepRecord


def record(tmp_path, submission: Submission | None = None) -> SweepRecord:
    context = SweepContext("s", str(tmp_path), {"name": "s"}, "sqlite:///x.db", "1", "abc")
    extra = {} if submission is None else {"submission": submission}
    return SweepRecord(context, {"cpu": 1.0}, 2, None, 2, None, **extra)


def test_the_registry_holds_the_four_ways_to_reach_compute():
    assert list(BACKENDS) == ["local", "ray-cluster", "slurm", "slurm-array"]
    for backend in BACKENDS.values():
        for method in ("submit", "resubmit", "state", "trial_states", "logs", "cancel"):
            assert callable(getattr(backend, method))
    assert backend_for("local", address=None, mode=None).name == "local"
    assert backend_for("local", address="auto", mode=None).name == "ray-cluster"
    assert backend_for("slurm", address=None, mode=None).name == "slurm"
    assert backend_for("slurm", address=None, mode="array").name == "slurm-array"
    with pytest.raises(ConfigError, match="--backend"):
        backend_for("kubernetes", address=None, mode=None)


def test_every_request_field_is_one_flag_of_sweep_and_resume():
    parser = build_parser()
    for command in ("sweep", "resume"):
        text = parser.parse_args([command, "x"]).__dict__
        for field in dataclasses.fields(SlurmRequest):
            assert field.name in text, (command, field.name)
    sweep_help = parser._subparsers._group_actions[0].choices["sweep"].format_help()
    for field in dataclasses.fields(SlurmRequest):
        assert flag_name(field) in sweep_help
    assert "--slurm-setup CMD" in sweep_help and "{ray,array}" in sweep_help


def test_flags_parse_into_the_request_with_its_types():
    args = build_parser().parse_args(
        ["sweep", "x", "--backend", "slurm", "--partition", "p", "--time", "00:10:00",
         "--nodes", "2", "--slurm-setup", "module load a", "--slurm-setup", "export B=1",
         "--slurm-mode", "ray", "--mem", "4G"]
    )  # fmt: skip
    request = request_from_args(args, SlurmRequest, "slurm")
    assert request == SlurmRequest(
        partition="p", time="00:10:00", nodes=2, setup=("module load a", "export B=1"), mem="4G"
    )
    missing = build_parser().parse_args(["sweep", "x", "--backend", "slurm", "--partition", "p"])
    with pytest.raises(ConfigError, match="--time"):
        request_from_args(missing, SlurmRequest, "slurm")


def test_another_backends_flag_is_one_line_exit_2(capsys):
    assert main(["sweep", "enhancement-smoke", "--nodes", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "signlock: error: invalid --nodes=2: only with --backend slurm"
    )


def test_the_record_stores_backend_request_and_jobs(tmp_path):
    request = SlurmRequest(partition="p", time="10").to_dict()
    submitted = record(tmp_path).with_job("slurm", request, "7").with_job("slurm", request, "9")
    submitted.write(tmp_path)
    raw = json.loads((tmp_path / "signlock-sweep.json").read_text())
    assert raw["backend"] == {"name": "slurm", "request": request, "jobs": ["7", "9"]}
    assert "slurm" not in raw
    read = SweepRecord.read(tmp_path)
    assert read == submitted and read.jobs == ("7", "9")
    assert backend_of(read).name == "slurm"


@pytest.mark.parametrize(
    ("legacy", "backend", "jobs"),
    [
        ({"slurm": {"request": {"mode": "array"}, "jobs": [3, 4]}}, "slurm-array", ("3", "4")),
        ({"slurm": {"request": {"mode": "ray"}, "jobs": ["5"]}}, "slurm", ("5",)),
        ({}, "local", ()),
    ],
)
def test_a_record_written_before_backends_were_named_still_reads(tmp_path, legacy, backend, jobs):
    raw = record(tmp_path).to_dict()
    del raw["backend"]
    (tmp_path / "signlock-sweep.json").write_text(json.dumps({**raw, **legacy}))
    read = SweepRecord.read(tmp_path)
    assert (read.submission.backend, read.jobs) == (backend, jobs)


def test_a_local_sweep_has_no_job_to_show_follow_or_cancel(tmp_path):
    local = record(tmp_path)
    assert backend_of(local).state(local) is None
    with pytest.raises(ConfigError, match="submitted with --backend slurm"):
        backend_of(local).logs(tmp_path, follow=False)
    with pytest.raises(ConfigError, match="submitted with --backend slurm"):
        backend_of(local).cancel(tmp_path)

"""TrialConfig: exact JSON/YAML round trip and one-line errors naming the field."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError, SignlockError


@settings(max_examples=60, deadline=None)
@given(
    lr=st.floats(1e-6, 1.0),
    steps=st.integers(1, 100_000),
    a_init=st.one_of(st.none(), st.floats(0.0, 0.09)),
    rank=st.one_of(st.none(), st.integers(1, 8)),
    targets=st.lists(st.sampled_from(["tok_emb.weight", "lm_head.weight"]), max_size=2),
    kind=st.sampled_from(["constant", "cosine", "exponential", "inverse"]),
)
def test_json_round_trip_is_exact(lr, steps, a_init, rank, targets, kind):
    cfg = TrialConfig.from_dict(
        {
            "steps": steps,
            "optim": {"lr": lr},
            "schedule": {"kind": kind},
            "init": {"a_init": a_init, "template_rank": rank, "targets": targets},
        }
    )
    again = TrialConfig.from_json(json.dumps(json.loads(cfg.to_json())))
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_yaml_file_is_loaded_with_safe_load(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text("steps: 10\noptim:\n  lr: 1.0e-3\ninit:\n  c_gap: 1.5\n")
    cfg = TrialConfig.from_file(path)
    assert cfg.steps == 10 and cfg.optim.lr == 1e-3 and cfg.init.gap_threshold(0.02) == 0.03
    path.write_text("!!python/object/apply:os.system ['echo unsafe']\n")
    with pytest.raises(Exception, match="could not determine a constructor"):
        TrialConfig.from_file(path)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"optim": {"lrr": 1e-3}}, "optim.lrr"),
        ({"bogus": 1}, "bogus"),
        ({"regularizer": {"lam": -0.1}}, "regularizer.lam"),
        ({"tracker": {"rho": 1e-4, "eps": 1e-4}}, "tracker.rho"),
        ({"tracker": {"rho": 1e-5}}, "tracker.rho"),
        ({"init": {"template_rank": 0}}, "init.template_rank"),
        ({"init": {"a_init": 0.2}}, "init.a_init"),
        ({"init": {"c_gap": 6.0}}, "init.c_gap"),
        ({"init": {"a_init": 0.01, "c_gap": 1.0}}, "init.c_gap"),
        ({"regularizer": {"lam": 0.1}}, "regularizer.lam"),
        ({"regularizer": {"projection": True}}, "regularizer.projection"),
        ({"steps": "many"}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"schedule": {"kind": "linear"}}, "schedule.kind"),
        ({"model": {"d_model": 130}}, "model.n_heads"),
        ({"data": {"seq_len": 512}}, "data.seq_len"),
        ({"model": {"kind": "mlp"}}, "data.dataset"),
        ({"optim": "fast"}, "optim"),
        ({"optim": {"lr": float("nan")}}, "optim.lr"),
    ],
)
def test_bad_config_names_the_field(raw, field):
    with pytest.raises(ConfigError) as caught:
        TrialConfig.from_dict(raw)
    assert caught.value.field == field
    message = str(caught.value)
    assert field in message and "\n" not in message
    assert isinstance(caught.value, SignlockError)


def test_gap_error_gives_the_allowed_bound():
    with pytest.raises(ConfigError, match=r"a_init <= 4\.892·σ_init = 0\.09783"):
        TrialConfig.from_dict({"init": {"a_init": 0.1}})


def test_overrides_use_dotted_paths_and_revalidate():
    cfg = TrialConfig().with_overrides({"optim.lr": 1e-3, "seed": 2, "init.a_init": 0.02})
    assert (cfg.optim.lr, cfg.seed, cfg.init.a_init) == (1e-3, 2, 0.02)
    with pytest.raises(ConfigError, match=r"optim\.nope"):
        TrialConfig().with_overrides({"optim.nope": 1})
    with pytest.raises(ConfigError, match=r"regularizer\.lam"):
        TrialConfig().with_overrides({"regularizer.lam": -1})


@pytest.mark.parametrize("command", ["plan", "sweep"])
def test_yaml_syntax_error_names_file_line_and_column(tmp_path, command):
    """Through the real CLI: one line with the file, and the 1-based line and column of the fault
    (the JSON path already says where; YAML used to say only "while parsing a flow mapping")."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nset:\n  steps: 40\naxes: {init.a_init: {grid: [0.01]}\n  seeds: [0]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "signlock.orchestrator.cli", command, str(path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and "line 5 column 3" in lines[0], lines[0]

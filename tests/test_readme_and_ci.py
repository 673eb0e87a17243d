"""CI must run exactly what the README tells a user to run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_command(section: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"## {section}\n.*?```bash\n(.+?)\n```", text, flags=re.DOTALL)
    assert match, f"README has no bash block under '## {section}'"
    return match.group(1).strip()


def test_ci_runs_the_readme_set_up_and_test_commands_verbatim():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_command("Set-up command") in ci_lines
    assert readme_command("Test command") in ci_lines
    assert ci_lines.index(readme_command("Set-up command")) < ci_lines.index(
        readme_command("Test command")
    )

"""``signlock presets``: the trial and sweep presets, one line each."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from signlock.search_spaces.presets import TRIAL_PRESETS


def register(commands: argparse._SubParsersAction) -> None:
    presets = commands.add_parser("presets", help="list trial and sweep presets")
    presets.set_defaults(func=run)


def preset_summary(factory: Callable[..., object]) -> str:
    """The first sentence of a preset's docstring on one line (a closing colon becomes a stop)."""
    text = " ".join((factory.__doc__ or "").split()).replace("``", "")
    end = re.search(r"[.:](\s|$)", text)
    return text[: end.start()] + "." if end else text


def run(args: argparse.Namespace) -> int:
    from signlock.search_spaces.sweeps import SWEEP_PRESETS

    for title, presets in (
        ("trial presets (signlock train --preset NAME):", TRIAL_PRESETS),
        ("sweep presets (signlock sweep NAME):", SWEEP_PRESETS),
    ):
        print(title)
        width = max(26, *(len(name) + 1 for name in presets))
        for name, factory in presets.items():
            print(f"  {name:{width}s} {preset_summary(factory)}")
    return 0

"""signlock.analysis: lock-in statistics, Pareto fronts and figures over a sweep's outputs.

For notebooks::

    from signlock.analysis import load_sweep, lockin_table, seed_summary
    sweep = load_sweep("enhancement")       # by name under signlock-runs/sweeps, or a path
    table = lockin_table(sweep)             # ĥ, ĝ, bootstrap interval, fit and regime tests
    seed_summary(sweep, table)              # mean/std/n over seeds per grid point
"""

from signlock.analysis.analyze import run_analysis
from signlock.analysis.lockin import bootstrap, fit, floating_test, goodness_of_fit
from signlock.analysis.pareto import pareto_front
from signlock.analysis.sweep_data import Sweep, load_sweep
from signlock.analysis.tables import lockin_table, seed_summary

__all__ = [
    "Sweep",
    "bootstrap",
    "fit",
    "floating_test",
    "goodness_of_fit",
    "load_sweep",
    "lockin_table",
    "pareto_front",
    "run_analysis",
    "seed_summary",
]

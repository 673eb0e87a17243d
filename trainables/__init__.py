"""Trainables: models, datasets, sign lock-in interventions, the sign tracker, the trial loop.

Nothing here imports Ray or MLflow; the orchestrator wires trials to them.
"""

"""Trainables: models, datasets, sign lock-in interventions, the sign tracker and the one-trial loop.

Nothing here imports Ray or MLflow; the orchestrator wires trials to them.
"""

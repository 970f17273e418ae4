"""Objectives: the loss of one task step, chosen by name from a small registry.

Losses are pure functions (`imp.objectives.losses`); an `Objective` says which model outputs
it needs and turns them, with the batch, into a scalar loss and metrics.
"""

from imp.objectives.registry import OBJECTIVES, Needs, Objective, get_objective

__all__ = ["OBJECTIVES", "Needs", "Objective", "get_objective"]

"""The task schedule: which task trains at step t.

IMP samples one task per step from a single-trial multinomial over the task weights (§3.1).
Here the draw for step t is a pure function of (seed, t, weights): NumPy's generator seeded
with the pair (seed, t). A resumed run therefore picks the same tasks with no state beyond the
step, a schedule can be printed or tested before training, and no device op is spent on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class TaskSampler:
  """Seeded per-step multinomial over task weights.

  Attributes:
    weights: normalised probabilities, one per task.
    seed: the schedule seed.
  """

  def __init__(self, weights: Sequence[float], seed: int):
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or len(weights) == 0:
      raise ValueError(f"sampler weights must be a non-empty vector, got shape {weights.shape}.")
    if np.any(weights < 0) or not np.all(np.isfinite(weights)) or weights.sum() <= 0:
      raise ValueError(f"sampler weights must be finite, >= 0 and not all 0: {weights}.")
    self.weights = weights / weights.sum()
    self._cdf = np.cumsum(self.weights)
    self.seed = int(seed)

  def task_index(self, step: int) -> int:
    """Index of the task trained at `step` (single-trial multinomial)."""
    u = np.random.default_rng([self.seed, int(step)]).random()
    # searchsorted on the CDF is the inverse-CDF draw; the clip guards float round-off at 1.0.
    return int(min(np.searchsorted(self._cdf, u, side="right"), len(self.weights) - 1))

  def schedule(self, start: int, count: int) -> np.ndarray:
    """Task indices of steps [start, start + count)."""
    return np.array([self.task_index(s) for s in range(start, start + count)], dtype=np.int32)

  def state_dict(self) -> dict[str, Any]:
    """Everything that defines the schedule (the step lives in the train state)."""
    return {"seed": self.seed, "weights": self.weights.tolist()}

  def check_state(self, state: dict[str, Any]) -> None:
    """Refuses a checkpointed schedule that differs from this one (resume would diverge)."""
    weights = np.asarray(state["weights"], np.float64)
    same_weights = weights.shape == self.weights.shape and np.allclose(weights, self.weights)
    if int(state["seed"]) == self.seed and same_weights:
      return
    changed = "config.seed" if int(state["seed"]) != self.seed else (
        "the task weights (config.tasks, config.sampling)")
    raise ValueError(
        f"{changed}: the checkpoint's task schedule differs from this config's: checkpoint "
        f"seed {state['seed']} weights {np.round(weights, 4).tolist()}, config seed "
        f"{self.seed} weights {np.round(self.weights, 4).tolist()}. Resume with the original "
        "config (seed, tasks, sampling) or use a new workdir.")

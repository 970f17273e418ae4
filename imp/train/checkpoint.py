"""Checkpoints with orbax: train state, plus JSON metadata (data state, schedule, config).

A checkpoint directory is `<workdir>/checkpoints/<step>/` with two items: `state` (the
TrainState arrays) and `meta` (JSON: data-iterator states, sampler schedule, config). orbax
writes to a temporary directory and renames it when complete, so a partial save is never
restored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from imp.train.state import TrainState

log = logging.getLogger("imp.checkpoint")


class Checkpointer:
  """Saves every `every` steps (and on demand), keeps the newest `keep`."""

  def __init__(self, directory: str | Path, *, every: int, keep: int = 2):
    self.directory = Path(directory).absolute()
    self.every = int(every)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state: TrainState, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save of `state` and `meta` at `step`."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, template: TrainState, step: int | None = None,
              ) -> tuple[TrainState, dict[str, Any]] | None:
    """Restores step (default: the latest) into `template`'s structure, or None if none."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    log.info("restored checkpoint %s from %s", step, self.directory)
    return restored["state"], dict(restored["meta"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

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


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


class Checkpointer:
  """Saves every `every` steps (and on demand), keeps the newest `keep`."""

  def __init__(self, directory: str | Path, *, every: int, keep: int = 2,
               best_metric: str | None = None, best_mode: str = "max"):
    self.directory = Path(directory).absolute()
    self.every = int(every)
    self.best_metric = best_metric
    self._best = None
    if best_metric:
      if best_mode not in ("max", "min"):
        raise ValueError(f"config.checkpoint_best_mode={best_mode!r}; valid: max, min.")
      # A second manager keeps only the best-scoring checkpoint, beside the newest `keep`.
      self._best = ocp.CheckpointManager(
          self.directory.with_name(self.directory.name + "_best"),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, create=True, best_fn=lambda m: m[best_metric], best_mode=best_mode),
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler()})
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state: TrainState, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save of `state` and `meta` at `step`."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def save_best(self, step: int, state: TrainState, meta: dict[str, Any],
                metrics: dict[str, float]) -> None:
    """Offers a checkpoint scored by `metrics[best_metric]`; the best one is kept."""
    if self._best is None or step in self._best.all_steps():  # re-evaluated, already offered
      return
    self._best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics={self.best_metric: float(metrics[self.best_metric])}, force=True)

  def check_compatible(self, template: TrainState, step: int) -> None:
    """Raises a ValueError listing every parameter whose shape differs from the checkpoint."""
    metadata = self._manager.item_metadata(step)["state"]
    stored = {_path(p): tuple(m.shape)
              for p, m in jax.tree_util.tree_flatten_with_path(metadata)[0]}
    wanted = {_path(p): tuple(x.shape)
              for p, x in jax.tree_util.tree_flatten_with_path(template)[0]}
    problems = []
    for path in sorted(set(stored) | set(wanted)):
      if not path.startswith("params"):
        continue
      if path not in stored:
        problems.append(f"{path}: not in the checkpoint (config shape {wanted[path]})")
      elif path not in wanted:
        problems.append(f"{path}: in the checkpoint {stored[path]}, not in this config's model")
      elif stored[path] != wanted[path]:
        problems.append(f"{path}: checkpoint {stored[path]} vs config {wanted[path]}")
    if problems:
      shown = "\n  ".join(problems[:20])
      more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
      raise ValueError(
          f"checkpoint {self.directory / str(step)} does not fit this config's model "
          f"({len(problems)} parameters differ):\n  {shown}{more}\nUse the config the run was "
          "started with, or a new workdir.")

  def restore(self, template: TrainState, step: int | None = None, shardings: Any = None,
              ) -> tuple[TrainState, dict[str, Any]] | None:
    """Restores step (default: the latest complete one) into `template`, or None if none.

    Arrays are read straight into `shardings` (a NamedSharding per leaf of `template`; by
    default the template's own), so each process reads only its shards of a sharded state.

    Only finished checkpoints are candidates: orbax writes into a temporary directory and
    renames it when complete, so one interrupted by a crash is never loaded. Restoring reads
    arrays and JSON only; nothing in a checkpoint is executed.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    self.check_compatible(template, step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    if shardings is not None:
      abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              abstract, shardings)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    log.info("restored checkpoint %s from %s", step, self.directory)
    return restored["state"], dict(restored["meta"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    for manager in (self._manager, self._best):
      if manager is not None:
        manager.wait_until_finished()
        manager.close()

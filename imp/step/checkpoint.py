"""Checkpoints with orbax: train state, plus JSON metadata (data state, schedule, config).

A checkpoint directory is `<workdir>/checkpoints/<step>/` with two items: `state` (the
TrainState arrays) and `meta` (JSON: data-iterator states, sampler schedule, config, and the
state's checksums, imp/step/checksums.py). orbax writes to a temporary directory and renames
it when complete, so a partial save is never restored.

A finished checkpoint can still rot or be torn by a copy. Resuming verifies it: its metadata
must parse, every array must read, and the arrays' checksums must match the saved ones.
An unreadable newest checkpoint is reported in one line (step, file, why), moved to
`<workdir>/checkpoints_corrupt/<step>` (never deleted) and the next newest is tried, with
every process agreeing on each verdict. `config.restore_step` picks a step by hand. With
every numbered checkpoint unreadable, the best one (`<workdir>/checkpoints_best`) is tried.

Saves are asynchronous: orbax writes in a thread and reports a failure (full disk, lost
bucket, permission) only when waited on. Each save waits for the previous one's outcome first,
and so does the end of the run; a failure is a CheckpointSaveError naming the path, the error,
the free space where known and the newest checkpoint that did commit. orbax deletes an old
checkpoint only after a newer one committed, so that one is kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from imp import paths
from imp.paths import Path
from imp.step import checksums, s3_arrays
from imp.step.state import TrainState

log = logging.getLogger("imp.checkpoint")

_path = checksums.path_name
META_FILE = "meta/metadata"  # what ocp.JsonCheckpointHandler writes for the `meta` item
STATE_METADATA = "state/_METADATA"  # the array tree (shapes, dtypes) of the `state` item
_REASON_BYTES = 400  # a reason is shared between processes in a fixed-size buffer


class CheckpointError(ValueError):
  """No checkpoint can be restored as asked (config.restore_step names a missing or
  unreadable one)."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (full disk, lost bucket, permission): the run stops."""


def free_space(directory: Path) -> str:
  """'N MiB free of M MiB' on the file system of `directory` (or its nearest existing
  parent), or 'free space unknown' (a bucket)."""
  if paths.is_url(directory):
    return "free space unknown"
  where = paths.as_path(directory)
  while not where.exists() and where != where.parent:
    where = where.parent
  try:
    usage = shutil.disk_usage(where)
  except OSError:
    return "free space unknown"
  return f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB"


def _reason(error: BaseException, limit: int = _REASON_BYTES - 40) -> str:
  """One line for an error: the innermost cause (tensorstore's status is short; the outer
  error repeats the whole TensorStore spec), at most `limit` characters."""
  while error.__cause__ is not None:  # `raise ... from`: not the context (json's StopIteration)
    error = error.__cause__
  text = " ".join(str(error).split()) or type(error).__name__
  return f"{type(error).__name__}: {text}"[:limit]


def _agree(problem: str | None) -> str | None:
  """The first problem any process found (the same on every process), or None."""
  if jax.process_count() == 1:
    return problem
  raw = (problem or "").encode()[:_REASON_BYTES].ljust(_REASON_BYTES, b"\0")
  every = multihost_utils.process_allgather(np.frombuffer(raw, np.uint8))
  for index, row in enumerate(np.asarray(every)):
    text = bytes(row).rstrip(b"\0").decode(errors="replace")
    if text:
      return text if index == jax.process_index() else f"process {index}: {text}"
  return None


def _barrier_keys(manager: str) -> ocp.options.MultiprocessingOptions:
  """Barrier names of one of the two CheckpointManagers, apart from the other's.

  Each manager ends an asynchronous save in a thread that waits at coordination-service
  barriers named the same in every manager. When the newest and the best checkpoint finish
  at once, one process would then enter the same barrier twice, which the service refuses
  ("Barrier ThreadSaveMultiHostValueHolder:set_value_start is already ongoing"): that
  process fails its save and the others wait for it until JAX's shutdown barrier aborts them.
  """
  return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=f"imp_{manager}")


def check_storage(workdir: paths.PathLike) -> None:
  """Readies orbax for the workdir's storage before any compile: an s3:// one needs its array
  store routed to tensorstore's s3 driver (imp/step/s3_arrays.py).

  Raises:
    paths.PathError: naming the workdir, when this orbax cannot be routed.
  """
  if str(workdir).startswith("s3://"):
    s3_arrays.enable(workdir)


class Checkpointer:
  """Saves every `every` steps (and on demand), keeps the newest `keep`."""

  def __init__(self, directory: str | Path, *, every: int, keep: int = 2,
               best_metric: str | None = None, best_mode: str = "max",
               restore_step: int | None = None):
    directory = paths.as_path(directory, key="workdir")
    check_storage(directory)
    self.directory = directory if paths.is_url(directory) else directory.absolute()
    self.every = int(every)
    # config.restore_step: restore this step, not the newest intact one.
    self.restore_step = None if restore_step is None else int(restore_step)
    self.set_aside_directory = self.directory.with_name(self.directory.name + "_corrupt")
    self._state_handler = ocp.StandardCheckpointHandler()
    self._barriers = 0
    self._started: dict[int, int | None] = {}  # id(manager) -> step of its latest save
    self.best_metric = best_metric
    self._best = None
    if best_metric:
      if best_mode not in ("max", "min"):
        raise ValueError(f"config.checkpoint_best_mode={best_mode!r}; valid: max, min.")
      # A second manager keeps only the best-scoring checkpoint, beside the newest `keep`.
      self._best = ocp.CheckpointManager(
          self.directory.with_name(self.directory.name + "_best"),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, create=True, best_fn=lambda m: m[best_metric], best_mode=best_mode,
              temporary_path_class=s3_arrays.temporary_path_class(self.directory),
              multiprocessing_options=_barrier_keys("best")),
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler()})
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, multiprocessing_options=_barrier_keys("latest"),
            temporary_path_class=s3_arrays.temporary_path_class(self.directory)),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  @contextlib.contextmanager
  def _saving(self, manager: ocp.CheckpointManager, step: int | None):
    """Turns any failure of a save, or of waiting for one, into a CheckpointSaveError."""
    # orbax names the failed save only in its traceback: it is the one last started
    step = self._started.get(id(manager)) if step is None else step
    self._started[id(manager)] = step
    try:
      yield
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore/OSError: every one is fatal
      committed = self._committed()
      directory = Path(str(manager.directory))
      raise CheckpointSaveError(
          f"checkpoint save of step {step} to {directory} failed: {_reason(e, 2000)} "
          f"({free_space(directory)}); the newest committed checkpoint, step {committed}, "
          "is kept. Free space or fix the path, then rerun the same command to resume."
      ) from e

  def _committed(self) -> int | None:
    """The newest numbered checkpoint on disk (orbax's own list already drops the ones a
    pending save was to delete)."""
    try:
      self._manager.reload()
      return self._manager.latest_step()
    except Exception:  # noqa: BLE001 - the storage that failed the save may fail this too
      return None

  def save(self, step: int, state: TrainState, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save of `state` and `meta` (plus the state's checksums), after
    the previous save's outcome (CheckpointSaveError if it failed)."""
    meta = dict(meta, checksums=checksums.checksums(state))
    self.wait()  # the previous save's failure names its own step
    with self._saving(self._manager, step):
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def save_best(self, step: int, state: TrainState, meta: dict[str, Any],
                metrics: dict[str, float]) -> None:
    """Offers a checkpoint scored by `metrics[best_metric]`; the best one is kept."""
    if self._best is None or step in self._best.all_steps():  # re-evaluated, already offered
      return
    meta = dict(meta, checksums=checksums.checksums(state))
    with self._saving(self._best, None):
      self._best.wait_until_finished()
    with self._saving(self._best, step):
      self._best.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
          metrics={self.best_metric: float(metrics[self.best_metric])}, force=True)

  def check_compatible(self, template: TrainState, step: int, metadata: Any = None) -> None:
    """Raises a ValueError listing every parameter whose shape differs from the checkpoint."""
    if metadata is None:
      metadata = self._state_handler.metadata(self.directory / str(step) / "state")
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
    """Restores a verified checkpoint into `template`, or None if there is none.

    Which one: `step`, else config.restore_step, else the newest intact one (an unreadable
    newer one is set aside, see the module docstring). Arrays are read straight into
    `shardings` (a NamedSharding per leaf of `template`; by default the template's own), so
    each process reads only its shards of a sharded state.

    Only finished checkpoints are candidates: orbax writes into a temporary directory and
    renames it when complete, so one interrupted by a crash is never loaded. Restoring reads
    arrays and JSON only; nothing in a checkpoint is executed.

    Raises:
      ValueError: the checkpoint does not fit `template` (the config's model).
      CheckpointError: the step asked for is not there, or is unreadable.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    if shardings is not None:
      abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              abstract, shardings)
    chosen = self.restore_step if step is None else int(step)
    steps = self.all_steps()
    if chosen is not None:
      if chosen not in steps:
        raise CheckpointError(
            f"config.restore_step={chosen}: no checkpoint of step {chosen} in "
            f"{self.directory}; valid: {', '.join(map(str, steps)) or '(none)'}.")
      restored, problem = self._verified(template, abstract, chosen)
      if problem:
        raise CheckpointError(
            f"config.restore_step={chosen}: checkpoint {self.directory / str(chosen)} is "
            f"unreadable: {problem}. Other steps: "
            f"{', '.join(str(s) for s in steps if s != chosen) or '(none)'}.")
      return restored
    for candidate in reversed(steps):
      restored, problem = self._verified(template, abstract, candidate)
      if not problem:
        return restored
      older = [s for s in steps if s < candidate]
      moved = self._set_aside(candidate)
      log.warning("checkpoint step %d is unreadable (%s); moved to %s; %s", candidate, problem,
                  moved, f"trying step {older[-1]}" if older else "no older checkpoint")
    return self._restore_best(template, abstract, tried=bool(steps))

  def _restore_best(self, template: TrainState, abstract: Any, *, tried: bool,
                    ) -> tuple[TrainState, dict[str, Any]] | None:
    """The best checkpoint (checkpoints_best/<step>) when no numbered one is readable: an
    older, intact state beats starting from step 0."""
    best = self.directory.with_name(self.directory.name + "_best")
    steps = sorted((int(p.name) for p in best.iterdir() if p.name.isdigit()),
                   reverse=True) if best.is_dir() else []
    for step in steps:
      restored, problem = self._verified(template, abstract, step, best)
      if not problem:
        log.warning("no numbered checkpoint is readable: resuming from the best checkpoint, "
                    "step %d in %s", step, best)
        return restored
      log.warning("best checkpoint step %d is unreadable too (%s)", step, problem)
    if tried or steps:  # a new run has nothing to restore and nothing to warn about
      log.warning("no readable checkpoint in %s%s: starting from step 0", self.directory,
                  f" or {best}" if steps else "")
    return None

  def _verified(self, template: TrainState, abstract: Any, step: int,
                directory: Path | None = None,
                ) -> tuple[tuple[TrainState, dict[str, Any]] | None, str | None]:
    """(state, meta) of `step` (in `directory`, by default the numbered checkpoints) read and
    checked, or (None, "file: why") on every process."""
    directory = directory or self.directory
    where = directory / str(step)
    problem, metadata, meta, state = None, None, None, None
    try:  # the array tree first: a model that does not fit is the config's error, not rot
      metadata = self._state_handler.metadata(where / "state")
    except Exception as e:  # noqa: BLE001 - any failure to read means an unusable checkpoint
      problem = f"{STATE_METADATA}: {_reason(e)}"
    problem = _agree(problem)
    if problem:
      return None, problem
    self.check_compatible(template, step, metadata)
    try:
      meta = json.loads((where / META_FILE).read_text())
      if not isinstance(meta, dict):
        raise ValueError(f"a JSON {type(meta).__name__}, not an object")
    except Exception as e:  # noqa: BLE001
      problem = f"{META_FILE}: {_reason(e)}"
    if not problem:
      try:
        state = self._state_handler.restore(where / "state",
                                            args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # noqa: BLE001
        problem = f"state arrays: {_reason(e)}"  # tensorstore names the array and the file
    problem = _agree(problem)
    if problem:
      return None, problem
    # Every process read its shards: compare checksums (one jit over the sharded state).
    bad = checksums.mismatches(state, meta.get("checksums") or {})
    if bad:
      more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
      return None, (f"state arrays {', '.join(bad[:3])}{more}: checksum differs from the "
                    "saved one (the array data changed after the save)")
    meta.pop("checksums", None)
    log.info("restored checkpoint %s from %s (checksums verified)", step, directory)
    return (state, meta), None

  def _set_aside(self, step: int) -> Path:
    """Moves checkpoint `step` to checkpoints_corrupt/<step>[.n] (process 0; all wait)."""
    target = self.set_aside_directory / str(step)
    n = 0
    while target.exists():
      n += 1
      target = self.set_aside_directory / f"{step}.{n}"
    self._sync(f"set_aside_{step}")  # every process has looked before process 0 moves it
    if jax.process_index() == 0:
      self.set_aside_directory.mkdir(parents=True, exist_ok=True)
      paths.move_tree(self.directory / str(step), target)
    self._sync(f"set_aside_{step}_done")
    self._manager.reload()
    return target

  def _sync(self, name: str) -> None:
    if jax.process_count() > 1:
      self._barriers += 1
      multihost_utils.sync_global_devices(f"imp_checkpoint_{name}_{self._barriers}")

  def committed(self) -> tuple[int | None, Path]:
    """(newest committed step, directory), after the pending save's outcome."""
    self.wait()
    return self.latest_step(), self.directory

  def wait(self) -> None:
    """Waits for the pending save; CheckpointSaveError if it failed."""
    with self._saving(self._manager, None):
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the pending saves and closes; CheckpointSaveError if one failed."""
    for manager in (self._manager, self._best):
      if manager is not None:
        with self._saving(manager, None):
          manager.wait_until_finished()
        manager.close()

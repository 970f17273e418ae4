"""A run opened from its config: the plan, the data sources, the state, the checkpointer.

  open_run(config, workdir): sources -> DatasetFacts -> Plan -> sharded state -> Run
  restore_latest(config, workdir): open_run + the latest checkpoint (evaluation, analysis)

`imp.train.loop` trains a Run; `imp.evaluate` and `imp.analysis` restore one. None of them
builds a run another way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

from imp import paths
from imp.config import schema
from imp.data import DataSource, TaskIterators, load_sources, task_dataset
from imp.parallel.distributed import check_same_config
from imp.parallel.mesh import process_rows
from imp.paths import Path, as_path  # a local path, gs:// or s3:// (etils.epath)
from imp.plan.plan import ConfigError, Plan, build_plan, facts_of_sources
from imp.plan.step_cache import StepCache
from imp.step.checkpoint import Checkpointer, check_storage
from imp.step.placement import init_sharded_state
from imp.step.state import TrainState

log = logging.getLogger("imp.restore")


@dataclasses.dataclass
class Run:
  """A plan with its data and its (freshly initialised) state."""

  plan: Plan
  workdir: Path
  sources: dict[str, DataSource]
  state: TrainState
  cache: StepCache
  checkpointer: Checkpointer

  # The plan's parts, for callers that read them off the run.
  config = property(lambda self: self.plan.config)
  registry = property(lambda self: self.plan.registry)
  sampler = property(lambda self: self.plan.sampler)
  model = property(lambda self: self.plan.model)
  tx = property(lambda self: self.plan.tx)
  mesh = property(lambda self: self.plan.mesh)
  rules = property(lambda self: self.plan.rules)
  shardings = property(lambda self: self.plan.shardings)


def open_run(config: ml_collections.ConfigDict, workdir: str | Path) -> Run:
  """Opens the sources, plans the run and initialises its state in its shardings.

  Raises:
    ConfigError: naming the bad key, file or task and what would be valid.
  """
  try:
    check_same_config(config.to_json_best_effort(sort_keys=True))  # every process, before step 1
    paths.check_reachable(workdir, key="workdir")  # a missing bucket: before any compile
    check_storage(workdir)
    sources = load_sources(config.datasets)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e
  plan = build_plan(config, facts_of_sources(sources))
  workdir = paths.as_path(workdir, key="workdir")
  workdir.mkdir(parents=True, exist_ok=True)
  state = init_sharded_state(plan.model, plan.tx, config.seed, plan.shardings)
  checkpointer = Checkpointer(workdir / "checkpoints", every=config.checkpoint_every,
                              keep=config.checkpoint_keep,
                              best_metric=config.get("checkpoint_best_metric"),
                              best_mode=schema.setting(config, "checkpoint_best_mode"),
                              restore_step=config.get("restore_step"))
  return Run(plan=plan, workdir=workdir, sources=sources, state=state, cache=StepCache(),
             checkpointer=checkpointer)


def restore(run: Run) -> tuple[TrainState, dict[str, Any]] | None:
  """The latest checkpoint of `run` in its shardings, or None; a checkpoint that does not fit
  the config is a ConfigError."""
  try:
    return run.checkpointer.restore(run.state, shardings=run.shardings)
  except ValueError as e:
    raise ConfigError(str(e)) from e


def restore_latest(config: ml_collections.ConfigDict, workdir: str | Path,
                   ) -> tuple[Run, TrainState]:
  """Opens the run and restores its latest checkpoint (for evaluation and analysis; the
  caller closes `run.checkpointer`)."""
  run = open_run(config, workdir)
  restored = restore(run)
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {run.checkpointer.directory}; train first.")
  return run, restored[0]


def task_iterators(run: Run) -> TaskIterators:
  """One seeded grain pipeline per task variant; this process reads its rows of each batch."""
  config = run.config
  seeds = np.random.SeedSequence(config.seed).spawn(len(run.registry))
  return TaskIterators({
      t.name: task_dataset(run.sources[t.dataset], t, seed=int(s.generate_state(1)[0]),
                           num_threads=config.input.num_threads, prefetch=config.input.prefetch,
                           rows=process_rows(run.plan.mesh, t.variant.batch_size),
                           audio_dtype=run.model.config.dtype)
      for t, s in zip(run.registry, seeds, strict=True)})


def default_cache_dir() -> str:
  """The user's compilation cache: $XDG_CACHE_HOME/imp/jax, else ~/.cache/imp/jax.

  One directory per user, as JAX's docs advise: a new workdir (a new run name per try) loads
  the programs an earlier run of the same shapes compiled. Entries are keyed by the program,
  the compile options, the devices and the JAX/XLA versions, so runs of different configs or
  versions share the directory without clashing.
  """
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  return os.path.join(base, "imp", "jax")


def cache_dir_of(config: ml_collections.ConfigDict) -> str | None:
  """config.compilation_cache_dir resolved: None for "off", the user's cache for "" (or
  unset), else the directory (a local path or gs:// / s3://)."""
  setting = config.get("compilation_cache_dir") or ""
  if not isinstance(setting, str):
    raise ConfigError(f"config.compilation_cache_dir={setting!r} must be a directory, '' "
                      f"(the user's cache, {default_cache_dir()}) or 'off'.")
  if setting == "off":
    return None
  return str(as_path(setting or default_cache_dir(), key="config.compilation_cache_dir"))


@contextlib.contextmanager
def compilation_cache(config: ml_collections.ConfigDict, workdir: str | Path | None = None):
  """JAX's persistent compilation cache on disk, for the duration of a run.

  A rerun, a resumed run or a run of the same shapes in a new workdir loads its compiled
  programs instead of compiling them again (JAX stores programs whose compile took at least
  jax_persistent_cache_min_compile_time_secs, 1 s by default). config.compilation_cache_dir:
  unset or "" for the user's cache (`default_cache_dir`), "off" for none, or a directory.

  Several processes may share it. JAX 0.12 writes an entry in place (lru_cache.py `put`:
  `write_bytes` to its final name, skipped when the name exists), not through a rename; a
  process that reads an entry while another still writes it fails to decompress it, which
  JAX turns into a warning and a compile (compiler.py `_cache_read`), never a wrong program.
  The previous process-wide setting is restored on exit. `workdir` is unused (kept for
  callers written when the cache lived there).

  Off in a multi-process job on CPU: there only process 0 writes the cache, every other
  process computes other keys (the CPU device assignment is in the key), so it never loads
  and compiles anew - and a program process 0 loads does not pair its gloo collectives with
  the same program compiled by another process: measured here, a 2-process resume whose
  process 0 loaded its train programs hung in the first step's all-gather until gloo's
  30-minute timeout (tests/test_multiprocess.py, the 1-process checkpoint resumed by 2).
  """
  del workdir
  path = cache_dir_of(config)
  if path is not None and jax.process_count() > 1 and jax.default_backend() == "cpu":
    if jax.process_index() == 0:
      log.info("persistent compilation cache off: %d CPU processes would pair loaded and "
               "compiled programs, whose collectives do not match", jax.process_count())
    path = None
  previous = jax.config.jax_compilation_cache_dir
  if path == previous:
    yield path
    return
  jax_compilation_cache.reset_cache()  # JAX opens the cache once; a new directory needs a reset
  jax.config.update("jax_compilation_cache_dir", path)
  try:
    yield path
  finally:
    jax_compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", previous)

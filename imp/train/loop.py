"""The AGD training loop (IMP Algorithm 1), top to bottom.

  sources + tasks -> sampler -> per-task grain iterators -> model + optimizer -> resume
  -> loop: task of step t -> its batch -> its compiled step (StepCache) -> metrics
  -> periodic evaluation and checkpoints -> summary

config.sampling.schedule picks the tasks of step t: "agd" (default) the one sampled task,
"weighted_sum" every task (M3SAT: one update on the weighted sum of all task losses).

Sections are marked with banners; each is short. Nothing here branches on a dataset's name.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache
from jax.sharding import Mesh
from tqdm import tqdm

from imp.analysis.expert_usage import ExpertUsage, plot_expert_usage
from imp.data import DataSource, TaskIterators, load_sources, task_dataset
from imp.evaluate import EvalSuite
from imp.model import IMPModel, ModelConfig, Request
from imp.objectives import OBJECTIVES, get_objective
from imp.parallel.distributed import check_same_config
from imp.parallel.mesh import (
  batch_sharding,
  data_parallel_size,
  make_mesh,
  process_rows,
  put_batch,
  replicated,
)
from imp.parallel.rules import Rules, get_rules, under_rules
from imp.tasks import TaskRegistry, TaskSampler
from imp.train.checkpoint import Checkpointer
from imp.train.metric_writers import MetricWriter
from imp.train.placement import abstract_state, init_sharded_state, train_state_shardings
from imp.train.preemption import Preemption
from imp.train.state import TrainState, make_optimizer
from imp.train.step import (
  StepSpec,
  make_infer_step,
  make_train_step,
  make_weighted_sum_step,
  task_table,
)
from imp.train.step_cache import StepCache, signature, xla_compiles

log = logging.getLogger("imp")

CONFIG_KEYS = ("seed", "total_steps", "log_every", "eval_every", "checkpoint_every",
               "checkpoint_keep", "checkpoint_best_metric", "checkpoint_best_mode", "datasets",
               "tasks", "sampling", "model", "optimizer", "input", "evals", "nonfinite", "mesh",
               "compilation_cache_dir", "mesh_rules", "dry_run", "restore_step")
NONFINITE_POLICIES = ("skip", "stop")
SCHEDULES = ("agd", "weighted_sum")  # config.sampling.schedule: the tasks of one step


class ConfigError(ValueError):
  """The config, its data or its checkpoint cannot start a run (raised before any compile)."""


class NonFiniteError(RuntimeError):
  """Training stopped on a non-finite loss or gradient (config.nonfinite)."""


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before the first step."""

  config: ml_collections.ConfigDict
  workdir: Path
  sources: dict[str, DataSource]
  registry: TaskRegistry
  sampler: TaskSampler
  model: IMPModel
  tx: Any
  state: TrainState
  suite: EvalSuite
  cache: StepCache
  checkpointer: Checkpointer
  mesh: Mesh
  rules: Rules  # logical axis -> mesh axes (config.mesh_rules)
  shardings: TrainState  # a NamedSharding per state leaf


def _check_config(config: ml_collections.ConfigDict) -> None:
  unknown = sorted(set(config.keys()) - set(CONFIG_KEYS))
  if unknown:
    raise ValueError(f"config.{unknown[0]} is not a config key; valid: {', '.join(CONFIG_KEYS)}.")
  for key in ("total_steps", "log_every"):
    if int(config[key]) <= 0:
      raise ValueError(f"config.{key}={config[key]} must be a positive int.")
  nonfinite = dict(config.get("nonfinite") or {})
  unknown = sorted(set(nonfinite) - {"policy", "max_consecutive"})
  if unknown:
    raise ValueError(f"config.nonfinite.{unknown[0]} is not a setting; valid: policy, "
                     "max_consecutive.")
  if nonfinite.get("policy", "skip") not in NONFINITE_POLICIES:
    raise ValueError(f"config.nonfinite.policy={nonfinite['policy']!r}; valid: "
                     f"{', '.join(NONFINITE_POLICIES)}.")
  schedule = schedule_of(config)
  if schedule not in SCHEDULES:
    raise ValueError(f"config.sampling.schedule={schedule!r}; valid: {', '.join(SCHEDULES)}.")


def schedule_of(config: ml_collections.ConfigDict) -> str:
  """config.sampling.schedule, "agd" when unset (checked by _check_config)."""
  return (config.get("sampling") or {}).get("schedule", "agd")


def _check_shapes(registry: TaskRegistry, model: ModelConfig) -> None:
  """Every variant's input must cut into whole patches and fit the position tables."""
  _, ph, pw = model.vision_patch
  for task in registry:
    v, key = task.variant, f"tasks.{task.entry}.variants.{task.variant.name}"
    visual = v.resolution and any(m in ("image", "video") for m in task.modalities)
    if visual and (v.resolution[0] % ph or v.resolution[1] % pw):
      raise ValueError(f"{key}.resolution={v.resolution} is not divisible by the patch "
                       f"model.vision_patch[1:]=({ph}, {pw}).")
    if "video" in task.modalities and v.frames % model.vision_patch[0]:
      raise ValueError(f"{key}.frames={v.frames} is not divisible by the temporal patch "
                       f"model.vision_patch[0]={model.vision_patch[0]}.")
    if "text" in task.modalities and (v.text_length or 0) > model.text_max_length:
      raise ValueError(f"{key}.text_length={v.text_length} exceeds "
                       f"model.text_max_length={model.text_max_length}.")
    if "audio" in task.modalities and v.spectrogram:
      pt, pq = model.audio_patch
      if v.spectrogram[0] % pt or v.spectrogram[1] % pq:
        raise ValueError(f"{key}.spectrogram={v.spectrogram} is not divisible by the patch "
                         f"model.audio_patch=({pt}, {pq}).")


def _check_batch_split(registry: TaskRegistry, mesh: Mesh) -> None:
  """Every variant's batch must split over the data-parallel devices and the processes."""
  shards = data_parallel_size(mesh)
  for task in registry:
    if task.variant.batch_size % max(shards, jax.process_count()):
      raise ValueError(
          f"tasks.{task.entry}.variants.{task.variant.name}.batch_size="
          f"{task.variant.batch_size} does not split over the {shards} data-parallel devices "
          f"of config.mesh ({dict(mesh.shape)}) and {jax.process_count()} processes.")


def model_modalities(registry: TaskRegistry, evals: Mapping[str, Any]) -> set[str]:
  """Modalities the model must embed: every task's, and what the evals read."""
  modalities = {m for t in registry for m in t.modalities}
  for entry in evals.values():
    modalities |= {entry.get("modality", "image"), "text"} if entry.get("zero_shot", True) else {
        entry.get("modality", "image")}
    modalities |= {m for pair in entry.get("retrieval") or () for m in pair}
  return modalities


def build(config: ml_collections.ConfigDict, workdir: str | Path) -> Experiment:
  """Validates the config and builds data, tasks, model, optimizer and state (no compiles).

  Raises:
    ConfigError: naming the bad key, file or task and what would be valid.
  """
  try:
    return _build(config, workdir)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e


def _build(config: ml_collections.ConfigDict, workdir: str | Path) -> Experiment:
  _check_config(config)
  check_same_config(config.to_json_best_effort(sort_keys=True))  # every process, before step 1
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)

  # ---- Data sources and tasks -----------------------------------------------------------
  sources = load_sources(config.datasets)
  registry = TaskRegistry.from_config(
      config.tasks.to_dict() if hasattr(config.tasks, "to_dict") else config.tasks,
      dataset_sizes={n: len(s.split("train")) for n, s in sources.items()},
      dataset_modalities={n: s.modalities for n, s in sources.items()},
      objectives=list(OBJECTIVES),
      weighting=config.sampling.get("weighting", "size"))
  for task in registry:
    get_objective(task.objective, f"tasks.{task.entry}.objective").check_args(
        task.entry, dict(task.args), task.modalities)
  sampler = TaskSampler(registry.weights, seed=config.seed)

  # ---- Model, optimizer, state ----------------------------------------------------------
  suite = EvalSuite(config.evals, sources)  # validates evals before the model is built
  modalities = model_modalities(registry, config.evals)
  mesh = make_mesh(config.get("mesh"))
  _check_batch_split(registry, mesh)
  heads = tuple((n, s.num_classes) for n, s in sources.items() if s.num_classes)
  model_config = ModelConfig.from_config(config.model)
  _check_shapes(registry, model_config)
  for name, source in sources.items():
    if source.tokenizer.vocab_size > model_config.text_vocab_size:
      raise ValueError(f"datasets.{name}.tokenizer has {source.tokenizer.vocab_size} ids, more "
                       f"than model.text_vocab_size={model_config.text_vocab_size}.")
  model = IMPModel(model_config, heads=heads, modalities=tuple(sorted(modalities)),
                   tasks=task_table(registry))
  tx = make_optimizer(config.optimizer, config.total_steps)
  rules = get_rules(config.get("mesh_rules"))
  shardings = train_state_shardings(model, tx, mesh, rules,
                                    abstract_state(model, tx, config.seed))
  state = init_sharded_state(model, tx, config.seed, shardings)
  best_metric = config.get("checkpoint_best_metric")
  if best_metric and best_metric not in suite.metric_names:
    raise ValueError(f"config.checkpoint_best_metric={best_metric!r} is not an eval result; "
                     f"valid: {', '.join(suite.metric_names) or '(no evals configured)'}.")
  return Experiment(
      config=config, workdir=workdir, sources=sources, registry=registry, sampler=sampler,
      model=model, tx=tx, state=state, suite=suite, cache=StepCache(), mesh=mesh, rules=rules,
      shardings=shardings,
      checkpointer=Checkpointer(workdir / "checkpoints", every=config.checkpoint_every,
                                keep=config.checkpoint_keep, best_metric=best_metric,
                                best_mode=config.get("checkpoint_best_mode", "max"),
                                restore_step=config.get("restore_step")))


def task_iterators(exp: Experiment) -> TaskIterators:
  """One seeded grain pipeline per task variant; this process reads its rows of each batch."""
  config = exp.config
  seeds = np.random.SeedSequence(config.seed).spawn(len(exp.registry))
  return TaskIterators({
      t.name: task_dataset(exp.sources[t.dataset], t, seed=int(s.generate_state(1)[0]),
                           num_threads=config.input.num_threads, prefetch=config.input.prefetch,
                           rows=process_rows(exp.mesh, t.variant.batch_size))
      for t, s in zip(exp.registry, seeds, strict=True)})


def _infer_fn(exp: Experiment, params: Any):
  """`infer(request, batch)` for the eval suite, backed by the step cache."""

  def infer(request: Request, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    program = exp.cache.compiled(
        ("infer", request),
        lambda: under_rules(make_infer_step(exp.model, request), exp.mesh, exp.rules),
        (params, batch))
    return jax.device_get(program(params, batch))

  return infer


def _meta(exp: Experiment, iterators: TaskIterators) -> dict[str, Any]:
  return {"sampler": exp.sampler.state_dict(), "data": iterators.get_state(),
          "config": json.loads(exp.config.to_json_best_effort())}


def _mean_by_task(pending: list[tuple[str, dict]]) -> dict[str, dict[str, np.ndarray]]:
  """task -> metric -> mean over the steps since the last write (arrays keep their shape)."""
  values = jax.device_get([m for _, m in pending])
  collected: dict[str, dict[str, list]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for (task, _), metrics in zip(pending, values, strict=True):
    for name, value in metrics.items():
      collected[task][name].append(np.asarray(value))
  return {task: {name: np.mean(v, axis=0) for name, v in metrics.items()}
          for task, metrics in collected.items()}


def _flatten(means: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
  """Scalars for the writers: per-layer MoE metrics become ".../l<layer>[/e<expert>]"."""
  flat = {}
  for task, metrics in means.items():
    for name, value in metrics.items():
      for index in np.ndindex(value.shape):
        suffix = "".join(f"/{p}{i}" for p, i in zip("le", index, strict=False))
        flat[f"{task}/{name}{suffix}"] = float(value[index])
  return flat


class _TrainLog:
  """Buffers step metrics on the device and writes per-task means every `log_every` steps.

  Metrics stay device arrays until a write, so logging forces no host sync per step.
  """

  def __init__(self, workdir: Path):
    self.writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    self.pending: list[tuple[str, dict]] = []
    self.steps: list[int] = []
    self.usage = ExpertUsage()  # MoE router probabilities per task/modality, for the heatmap
    self.skipped = 0  # steps whose update the NaN/Inf guard skipped
    self.consecutive = 0
    self.first_skip: tuple[int, str] | None = None  # (step, task) of the latest skip run

  def add(self, step: int, task_name: str, metrics: dict) -> None:
    self.steps.append(step)
    self.pending.append((task_name, metrics))

  def _count_skips(self) -> None:
    flags = jax.device_get([m["nonfinite"] for _, m in self.pending])
    previous = None
    for step, (task_name, _), flag in zip(self.steps, self.pending, flags, strict=True):
      if step == previous:  # a weighted-sum step logs every task: count the step once
        continue
      previous = step
      if flag:
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive == 1:
          self.first_skip = (step, task_name)
      else:
        self.consecutive = 0

  def write(self, step: int, cache_stats: dict[str, float], data_skipped: int = 0) -> str:
    """Writes the buffered means (and the count of skipped bad examples); returns the line."""
    self._count_skips()
    means = _mean_by_task(self.pending)
    for task_name, metrics in means.items():
      steps = sum(t == task_name for t, _ in self.pending)
      for name, value in metrics.items():
        if name.endswith("/router_prob"):  # moe/<modality>/router_prob: [layers, experts]
          self.usage.add(f"{task_name} {name.split('/')[1]}", value, count=steps)
    self.pending.clear()
    self.steps.clear()
    scalars = _flatten(means)
    self.writer.write(step, dict(scalars, **{f"step_cache/{k}": v
                                             for k, v in cache_stats.items()},
                                 **{"data/skipped_examples": data_skipped}))
    line = "  ".join(f"{k}={v:.3f}" for k, v in sorted(scalars.items())
                     if k.endswith(("/loss", "/accuracy")))
    return (f"step {step}: {line}  (step cache: {cache_stats['size']} programs, "
            f"{cache_stats['hits']} hits, {100 * cache_stats['compile_share']:.1f}% of wall "
            "compiling)" + (f"  ({data_skipped} bad examples skipped)" if data_skipped else ""))

  def close(self, workdir: Path) -> None:
    if self.usage and jax.process_index() == 0:  # only process 0 writes files
      log.info("expert usage heatmap: %s",
               plot_expert_usage(self.usage.means(), workdir / "moe_expert_usage.png",
                                 label="mean router probability"))
    self.writer.close()


def _check_nonfinite(train_log: _TrainLog, config: ml_collections.ConfigDict,
                     checkpointer: Checkpointer) -> None:
  """Applies config.nonfinite after a metrics write (skipped updates are counted there)."""
  settings = dict(config.get("nonfinite") or {})
  policy, limit = settings.get("policy", "skip"), int(settings.get("max_consecutive", 20))
  if policy == "stop" and train_log.skipped:
    why = "config.nonfinite.policy='stop'"
  elif train_log.consecutive > limit:
    why = (f"{train_log.consecutive} consecutive skipped steps > "
           f"config.nonfinite.max_consecutive={limit}")
  else:
    return
  step, task = train_log.first_skip
  raise NonFiniteError(
      f"non-finite loss or gradient in task {task!r} at step {step} ({why}). The guard kept "
      "the parameters of those steps unchanged; the latest checkpoint is step "
      f"{checkpointer.latest_step()} in {checkpointer.directory}.")


@contextlib.contextmanager
def compilation_cache(config: ml_collections.ConfigDict, workdir: str | Path):
  """JAX's persistent compilation cache on disk, for the duration of a run.

  A restarted or resumed run then loads its compiled steps instead of compiling them again
  (JAX stores programs whose compile took at least jax_persistent_cache_min_compile_time_secs).
  config.compilation_cache_dir: unset or "" for <workdir>/compilation_cache, "off" for no
  cache, or a directory (shared between runs of one machine and JAX version). The previous
  process-wide setting is restored on exit.
  """
  setting = config.get("compilation_cache_dir") or ""
  if not isinstance(setting, str):
    raise ConfigError(f"config.compilation_cache_dir={setting!r} must be a directory, '' "
                      "(<workdir>/compilation_cache) or 'off'.")
  path = None if setting == "off" else str(Path(setting or Path(workdir) / "compilation_cache"))
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


def train(config: ml_collections.ConfigDict, workdir: str | Path, *,
          stop_after: int | None = None) -> dict[str, Any]:
  """Runs (or resumes) an experiment; returns the summary also written to summary.json.

  Args:
    config: the experiment config.
    workdir: checkpoints, metrics and summary go here; an existing checkpoint is resumed.
    stop_after: stop (with a checkpoint) after this many steps of this run, as a preemption
      would; for notebooks and tests.
  """
  with compilation_cache(config, workdir):
    return _train(config, workdir, stop_after=stop_after)


def _train(config: ml_collections.ConfigDict, workdir: str | Path, *,
           stop_after: int | None) -> dict[str, Any]:
  wall_start = time.perf_counter()
  exp = build(config, workdir)
  registry, sampler, cache = exp.registry, exp.sampler, exp.cache
  log.info("tasks (name, weight): %s",
           ", ".join(f"{t.name}={t.weight:.3f}" for t in registry))

  # ---- Input pipelines: one grain iterator per task variant ------------------------------
  iterators = task_iterators(exp)

  # ---- Resume ------------------------------------------------------------------------------
  state = exp.state
  try:
    restored = exp.checkpointer.restore(state, shardings=exp.shardings)
  except ValueError as e:  # a checkpoint that does not fit this config
    raise ConfigError(str(e)) from e
  if restored is not None:
    state, meta = restored
    sampler.check_state(meta["sampler"])
    iterators.set_state(meta["data"])
    log.info("resumed from step %d", int(state.step))

  # ---- Compiled steps ----------------------------------------------------------------------
  specs = {t.name: StepSpec.from_task(t) for t in registry}
  schedule = schedule_of(config)
  # State stays in its shardings; every batch field is split on examples; metrics replicated.
  in_shardings = (exp.shardings, batch_sharding(exp.mesh))
  out_shardings = (exp.shardings, replicated(exp.mesh))

  def run_step(names: tuple[str, ...], state: TrainState, batches: tuple[dict, ...],
               ) -> tuple[TrainState, tuple[dict, ...]]:
    """The compiled step of these tasks: the AGD step of one, or the weighted sum of all."""
    if schedule == "agd":
      (spec,), (batch,) = [specs[n] for n in names], batches
      program = cache.compiled(
          ("train", spec),
          lambda: under_rules(make_train_step(exp.model, exp.tx, spec, state, batch), exp.mesh,
                              exp.rules),
          (state, batch), donate_argnums=(0,), sig=signature(batch),
          in_shardings=in_shardings, out_shardings=out_shardings)
      state, metrics = program(state, batch)
      return state, (metrics,)
    step_specs = tuple(specs[n] for n in names)
    program = cache.compiled(
        ("train_weighted_sum", step_specs),
        lambda: under_rules(make_weighted_sum_step(exp.model, exp.tx, step_specs, state,
                                                   batches), exp.mesh, exp.rules),
        (state, batches), donate_argnums=(0,), sig=signature(batches),
        in_shardings=in_shardings, out_shardings=out_shardings)
    return program(state, batches)

  # ---- The AGD loop ----------------------------------------------------------------------
  train_log = _TrainLog(exp.workdir)
  total = int(config.total_steps)
  start = int(state.step)
  end = total if stop_after is None else min(total, start + int(stop_after))
  counts = collections.Counter()  # steps that trained each task
  steps_run = 0
  evals: dict[str, float] = {}
  data_wait = 0.0
  warm: set[tuple[str, ...]] = set()  # task tuples whose step has run once: compiles done
  compiles_after_warmup = 0
  loop_start = time.perf_counter()
  bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=None,
             dynamic_ncols=True)

  def evaluate_and_log(done: int, state: TrainState) -> dict[str, float]:
    evals = exp.suite.run(_infer_fn(exp, state.params))
    train_log.writer.write(done, evals, kind="eval")
    exp.checkpointer.save_best(done, state, _meta(exp, iterators), evals)
    bar.write(f"step {done}: eval " + "  ".join(f"{k}={v:.4f}" for k, v in evals.items()))
    return evals

  with Preemption() as preemption:
    for step in range(start, end):
      names = ((registry[sampler.task_index(step)].name,) if schedule == "agd"
               else tuple(t.name for t in registry))
      t0 = time.perf_counter()
      batches = tuple(iterators.next(name) for name in names)
      data_wait += time.perf_counter() - t0
      # Split over the data-parallel devices.
      batches = tuple(put_batch(batch, exp.mesh) for batch in batches)
      compiles_before = xla_compiles()
      state, metrics = run_step(names, state, batches)
      if names in warm:
        compiles_after_warmup += xla_compiles() - compiles_before
      warm.add(names)
      steps_run += 1
      for name, task_metrics in zip(names, metrics, strict=True):
        counts[name] += 1
        train_log.add(step, name, task_metrics)
      bar.update(1)
      done = step + 1
      # Read once per step: the save and the stop below must agree on it (and every process
      # on the step: imp/train/preemption.py).
      preempted = preemption.reached(done)
      stopping = done == end or preempted

      if done % config.log_every == 0 or stopping:
        bar.write(train_log.write(done, cache.stats(time.perf_counter() - wall_start),
                                  sum(s.skips.count for s in exp.sources.values())))
        _check_nonfinite(train_log, config, exp.checkpointer)

      # Checkpoint before evaluating, so a failing evaluation never costs trained steps.
      if stopping or exp.checkpointer.should_save(done):
        exp.checkpointer.save(done, state, _meta(exp, iterators))

      # A preemption's grace period is short: save and go; the rerun evaluates a final step.
      if not preempted and (done == total or (config.eval_every and
                                              done % config.eval_every == 0)):
        evals = evaluate_and_log(done, state)

      if preempted:
        bar.write(f"step {done}: signal {preemption.signal} received; saved a checkpoint at "
                  f"step {done} in {exp.checkpointer.directory}; rerun the same command to "
                  "resume.")
        break
    # A run stopped after its final save but before its final evaluation finished (or the
    # command of a finished run is rerun): evaluate the final checkpoint now.
    if start == total:
      evals = evaluate_and_log(total, state)
  bar.close()
  exp.checkpointer.close()

  # ---- Summary -----------------------------------------------------------------------------
  wall = time.perf_counter() - wall_start
  loop_seconds = time.perf_counter() - loop_start
  summary = {
      "steps": start + steps_run, "total_steps": total, "steps_this_run": steps_run,
      "stopped_early": start + steps_run < total, "wall_seconds": round(wall, 2),
      "steps_per_second": round(steps_run / loop_seconds, 2) if steps_run else None,
      "data_wait_share": round(data_wait / loop_seconds, 4) if steps_run else None,
      "step_cache": dict(cache.stats(wall), xla_compiles_after_warmup=compiles_after_warmup),
      "task_steps": dict(sorted(counts.items())),
      "nonfinite_skipped_steps": train_log.skipped,
      # Bad examples the pipelines skipped (datasets.<name>.on_error="skip"), this run.
      "data_skipped_examples": {n: s.skips.count for n, s in exp.sources.items()
                                if s.skips.count},
      "eval": evals,
  }
  train_log.writer.write(total, {"compile_share": summary["step_cache"]["compile_share"],
                                 "data_wait_share": summary["data_wait_share"] or 0.0},
                         kind="summary")
  train_log.close(exp.workdir)
  if jax.process_index() == 0:
    (exp.workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary


def restore_latest(config: ml_collections.ConfigDict, workdir: str | Path,
                   ) -> tuple[Experiment, TrainState]:
  """Builds the experiment and restores the latest checkpoint in `workdir` (for evaluation and
  analysis; the caller closes `exp.checkpointer`)."""
  exp = build(config, workdir)
  try:
    restored = exp.checkpointer.restore(exp.state, shardings=exp.shardings)
  except ValueError as e:  # a checkpoint that does not fit, or config.restore_step's is bad
    raise ConfigError(str(e)) from e
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {exp.checkpointer.directory}; train first.")
  return exp, restored[0]


infer_fn = _infer_fn  # public: imp.evaluate and imp.analysis run programs the same way


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
  """Runs the eval suite on the latest checkpoint in `workdir`."""
  with compilation_cache(config, workdir):
    return _evaluate(config, workdir)


def _evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
  exp, state = restore_latest(config, workdir)
  results = exp.suite.run(_infer_fn(exp, state.params))
  exp.checkpointer.close()
  if jax.process_index() == 0:
    (exp.workdir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
  return results

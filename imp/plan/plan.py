"""A run's plan, built from a validated config alone: no data read, no array allocated.

  config -> checks -> tasks (TaskRegistry) + sampler -> StepSpec and abstract batch per task
  -> model, optimizer, mesh, logical-axis rules -> abstract train state in its shardings
  -> the train programs (one per task under AGD, one over all tasks under weighted_sum)

What the plan knows of the datasets comes as `DatasetFacts` (train examples for the sampling
weights, classes for the heads, modalities, tokenizer size): from the opened sources in
training (`facts_of_sources`), or declared in `config.dry_run.datasets` by the dry run
(`declared_facts`). Training, evaluation, the dry run and the benchmarks all start here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding

from imp.config import schema
from imp.model import IMPModel, ModelConfig
from imp.model.embedders import input_dtype
from imp.objectives import OBJECTIVES, get_objective
from imp.parallel.mesh import batch_sharding, data_parallel_size, make_mesh, replicated
from imp.parallel.rules import Rules, get_rules
from imp.plan import config_keys
from imp.plan.routing import TaskTable, task_ids, task_table
from imp.step.placement import abstract_state, train_state_shardings
from imp.step.state import TrainState, logical_axes, make_optimizer
from imp.step.step import StepSpec, make_train_step, make_weighted_sum_step
from imp.tasks import Task, TaskRegistry, TaskSampler

CONFIG_KEYS = schema.keys_of("")  # declared once, in imp/config/schema.py
NONFINITE_POLICIES = ("skip", "stop")
SCHEDULES = ("agd", "weighted_sum")  # config.sampling.schedule: the tasks of one step
_DECLARED_KEYS = schema.keys_of("dry_run.datasets.*")


class ConfigError(ValueError):
  """The config, its data or its checkpoint cannot start a run (raised before any compile)."""


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
  """What the plan needs to know of one dataset (never its examples)."""

  train_examples: int
  num_classes: int
  modalities: tuple[str, ...]
  vocab_size: int | None = None  # ids of its tokenizer; None when not known (dry run)


def facts_of_sources(sources: Mapping[str, Any]) -> dict[str, DatasetFacts]:
  """DatasetFacts of opened `imp.data.DataSource`s."""
  return {n: DatasetFacts(len(s.split("train")), s.num_classes, tuple(s.modalities),
                          s.tokenizer.vocab_size) for n, s in sources.items()}


def declared_facts(config: ml_collections.ConfigDict) -> dict[str, DatasetFacts]:
  """DatasetFacts declared in `config.dry_run.datasets`, one entry per dataset."""
  declared = dict((config.get("dry_run") or {}).get("datasets") or {})
  out = {}
  for name in config.datasets:
    if name not in declared:
      raise ConfigError(
          f"config.dry_run.datasets.{name} is missing: the dry run opens no data, so declare "
          f"dict(train_examples=..., num_classes=..., modalities=(...)) for every dataset.")
    entry = dict(declared[name])
    unknown = sorted(set(entry) - set(_DECLARED_KEYS))
    missing = sorted(set(_DECLARED_KEYS) - set(entry))
    if unknown or missing:
      raise ConfigError(f"config.dry_run.datasets.{name}: unknown {unknown}, missing "
                        f"{missing}; valid keys: {', '.join(_DECLARED_KEYS)}.")
    out[name] = DatasetFacts(int(entry["train_examples"]), int(entry["num_classes"]),
                             tuple(entry["modalities"]))
  return out


def abstract_batch(task: Task, model: ModelConfig, labelled: bool,
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """The batch a task's pipeline yields (imp/data/pipeline.py), as shapes: the one definition.

  image [B, H, W, C] and video [B, T, H, W, C] uint8 (normalised inside the step), audio
  [B, time, mel, 1] in the model's compute dtype, text [B, L] int32, label [B] int32 when the
  dataset has classes.
  """
  v, b = task.variant, task.variant.batch_size
  out = {}
  for modality in task.modalities:
    if modality in ("image", "video") and v.resolution is None:
      raise ConfigError(f"task {task.name}: variant needs `resolution` for {modality!r}.")
    if modality == "image":
      shape = (b, *v.resolution, model.vision_channels)
    elif modality == "video":
      shape = (b, v.frames, *v.resolution, model.vision_channels)
    elif modality == "audio":
      if v.spectrogram is None:
        raise ConfigError(f"task {task.name}: variant needs `spectrogram` for audio.")
      shape = (b, *v.spectrogram, 1)
    else:
      if v.text_length is None:
        raise ConfigError(f"task {task.name}: variant needs `text_length` for text.")
      shape = (b, v.text_length)
    out[modality] = jax.ShapeDtypeStruct(shape, input_dtype(modality, model.dtype))
  if labelled:
    out["label"] = jax.ShapeDtypeStruct((b,), jnp.int32)
  return out


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """One compiled train program: the AGD step of one task, or the weighted sum of all.

  Attributes:
    name: the task name, or "weighted_sum of N tasks".
    key: the StepCache name: ("train", spec) or ("train_weighted_sum", specs).
    tasks: the task names whose batches it takes, in order.
    summed: the weighted sum of every task's loss in one step (`config.sampling.schedule`
      "weighted_sum"), which takes a tuple of batches and returns a tuple of metrics; else
      the AGD step of one task, which takes its batch and returns its metrics.
  """

  name: str
  key: Hashable
  tasks: tuple[str, ...]
  summed: bool = False

  def arguments(self, batches: tuple[Any, ...]) -> Any:
    """What the program takes after the state, from its tasks' batches in order."""
    return batches if self.summed else batches[0]

  def per_task(self, metrics: Any) -> tuple[Any, ...]:
    """The program's metrics as one entry per task, in `tasks` order."""
    return metrics if self.summed else (metrics,)

  def step_fn(self, model: IMPModel, tx: optax.GradientTransformation, state: Any,
              batch: Any):
    """The pure (state, batch) -> (state, metrics) function (not compiled)."""
    make = make_weighted_sum_step if self.summed else make_train_step
    return make(model, tx, self.key[1], state, batch)


@dataclasses.dataclass
class Plan:
  """Everything about a run that follows from its config (see the module docstring).

  `state` is the abstract TrainState, every leaf a ShapeDtypeStruct carrying its sharding.
  """

  config: ml_collections.ConfigDict
  facts: dict[str, DatasetFacts]
  registry: TaskRegistry
  sampler: TaskSampler
  schedule: str
  model_config: ModelConfig
  model: IMPModel
  tx: optax.GradientTransformation
  mesh: Mesh
  rules: Rules
  state: TrainState
  shardings: TrainState
  specs: dict[str, StepSpec]
  task_table: TaskTable  # (entry, Request): task ids and the eval routes (imp/plan/routing.py)
  batches: dict[str, dict[str, jax.ShapeDtypeStruct]]
  programs: list[TrainProgram]
  remat_auto: bool = False  # model.remat_policy="auto": imp.plan.programs picks per program

  @property
  def in_shardings(self) -> tuple[TrainState, NamedSharding]:
    """State in its shardings; every batch field split on examples."""
    return self.shardings, batch_sharding(self.mesh)

  @property
  def out_shardings(self) -> tuple[TrainState, NamedSharding]:
    return self.shardings, replicated(self.mesh)

  def program_at(self, step: int) -> TrainProgram:
    """The program of step `step`: under AGD the AGD step of the task the sampler draws for
    it (seeded by (seed, step), so every process and a resumed run agree), else the
    weighted sum of every task."""
    if self.schedule == "agd":
      return self._by_task[self.registry[self.sampler.task_index(step)].name]
    return self.programs[0]

  def program_of(self, names: tuple[str, ...]) -> TrainProgram:
    """The train program of one step's tasks."""
    if self.schedule == "agd":
      (name,) = names
      return self._by_task[name]
    return self.programs[0]

  @functools.cached_property
  def _by_task(self) -> dict[str, TrainProgram]:
    return {p.tasks[0]: p for p in self.programs}

  def batch_of(self, program: TrainProgram) -> Any:
    """The abstract arguments after the state: one batch, or a tuple of every task's."""
    return program.arguments(tuple(self.batches[t] for t in program.tasks))

  def step_fn(self, program: TrainProgram, state: Any = None, batch: Any = None):
    """The pure (state, batch) -> (state, metrics) function of `program` (not compiled)."""
    state = self.state if state is None else state
    batch = self.batch_of(program) if batch is None else batch
    return program.step_fn(self.model, self.tx, state, batch)


def schedule_of(config: ml_collections.ConfigDict) -> str:
  """config.sampling.schedule (the schema's default when unset)."""
  return schema.setting(config, "sampling.schedule")


def check_config(config: ml_collections.ConfigDict) -> None:
  """The top-level keys, every set key's type (the schema's), and the settings no part of
  the plan owns."""
  unknown = sorted(set(config.keys()) - set(CONFIG_KEYS))
  if unknown:
    raise ConfigError(f"config.{unknown[0]} is not a config key; valid: {', '.join(CONFIG_KEYS)}.")
  try:
    schema.check_types(config, config_keys.all_keys())
  except ValueError as e:
    raise ConfigError(str(e)) from e
  for key in ("total_steps", "log_every"):
    if int(config[key]) <= 0:
      raise ConfigError(f"config.{key}={config[key]} must be a positive int.")
  nonfinite = dict(config.get("nonfinite") or {})
  unknown = sorted(set(nonfinite) - set(schema.keys_of("nonfinite")))
  if unknown:
    raise ConfigError(f"config.nonfinite.{unknown[0]} is not a setting; valid: "
                      f"{', '.join(schema.keys_of('nonfinite'))}.")
  if schema.setting(config, "nonfinite.policy") not in NONFINITE_POLICIES:
    raise ConfigError(f"config.nonfinite.policy={nonfinite['policy']!r}; valid: "
                      f"{', '.join(NONFINITE_POLICIES)}.")
  schedule = schedule_of(config)
  if schedule not in SCHEDULES:
    raise ConfigError(f"config.sampling.schedule={schedule!r}; valid: {', '.join(SCHEDULES)}.")
  limit = config.get("device_memory_limit")
  if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float)
                            or limit <= 0):
    raise ConfigError(f"config.device_memory_limit={limit!r} must be a positive number of "
                      "bytes per device, or None (the device's own memory).")


def check_shapes(registry: TaskRegistry, model: ModelConfig) -> None:
  """Every variant's input must cut into whole patches and fit the position tables."""
  _, ph, pw = model.vision_patch
  for task in registry:
    v, key = task.variant, f"tasks.{task.entry}.variants.{task.variant.name}"
    visual = v.resolution and any(m in ("image", "video") for m in task.modalities)
    if visual and (v.resolution[0] % ph or v.resolution[1] % pw):
      raise ConfigError(f"{key}.resolution={v.resolution} is not divisible by the patch "
                        f"model.vision_patch[1:]=({ph}, {pw}).")
    if "video" in task.modalities and v.frames % model.vision_patch[0]:
      raise ConfigError(f"{key}.frames={v.frames} is not divisible by the temporal patch "
                        f"model.vision_patch[0]={model.vision_patch[0]}.")
    if "text" in task.modalities and (v.text_length or 0) > model.text_max_length:
      raise ConfigError(f"{key}.text_length={v.text_length} exceeds "
                        f"model.text_max_length={model.text_max_length}.")
    if "audio" in task.modalities and v.spectrogram:
      pt, pq = model.audio_patch
      if v.spectrogram[0] % pt or v.spectrogram[1] % pq:
        raise ConfigError(f"{key}.spectrogram={v.spectrogram} is not divisible by the patch "
                          f"model.audio_patch=({pt}, {pq}).")


def check_batch_split(registry: TaskRegistry, mesh: Mesh) -> None:
  """Every variant's batch must split over the data-parallel devices and the processes."""
  shards = data_parallel_size(mesh)
  for task in registry:
    if task.variant.batch_size % max(shards, jax.process_count()):
      raise ConfigError(
          f"tasks.{task.entry}.variants.{task.variant.name}.batch_size="
          f"{task.variant.batch_size} does not split over the {shards} data-parallel devices "
          f"of config.mesh ({dict(mesh.shape)}) and {jax.process_count()} processes.")


def check_merge_experts(evals: Mapping[str, Any], model: ModelConfig) -> None:
  """`evals.<entry>.merge_experts` needs experts whose routing is data-independent."""
  for name, entry in evals.items():
    if not schema.filled(entry, "evals.*")["merge_experts"]:
      continue
    if not model.moe.num_experts:
      raise ConfigError(f"evals.{name}.merge_experts=True: the model has no experts "
                        "(model.moe.num_experts=0); set it False.")
    if model.moe.data_dependent:
      raise ConfigError(
          f"evals.{name}.merge_experts=True needs a data-independent model.moe.condition "
          f"(modality, task or attribute); {model.moe.condition!r} routes each token by its "
          "value, so its experts cannot be merged.")


def model_modalities(registry: TaskRegistry, evals: Mapping[str, Any]) -> set[str]:
  """Modalities the model must embed: every task's, and what the evals read."""
  modalities = {m for t in registry for m in t.modalities}
  for entry in map(functools.partial(schema.filled, section="evals.*"), evals.values()):
    modalities |= {entry["modality"], "text"} if entry["zero_shot"] else {entry["modality"]}
    modalities |= {m for pair in entry["retrieval"] or () for m in pair}
  return modalities


def build_plan(config: ml_collections.ConfigDict, facts: Mapping[str, DatasetFacts], *,
               tasks: Mapping[str, Any] | None = None) -> Plan:
  """The plan of `config`; `tasks` replaces config.tasks (the dry run's scaled batches).

  Raises:
    ConfigError: naming the bad key or task and what would be valid.
  """
  try:
    return _build_plan(config, dict(facts), tasks)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e


def _build_plan(config: ml_collections.ConfigDict, facts: dict[str, DatasetFacts],
                tasks: Mapping[str, Any] | None) -> Plan:
  check_config(config)
  if tasks is None:
    tasks = config.tasks.to_dict() if hasattr(config.tasks, "to_dict") else config.tasks
  registry = TaskRegistry.from_config(
      tasks, dataset_sizes={n: f.train_examples for n, f in facts.items()},
      dataset_modalities={n: f.modalities for n, f in facts.items()},
      objectives=list(OBJECTIVES),
      weighting=schema.setting(config, "sampling.weighting"))
  for task in registry:
    get_objective(task.objective, f"tasks.{task.entry}.objective").check_args(
        task.entry, dict(task.args), task.modalities)
  sampler = TaskSampler(registry.weights, seed=config.seed)
  mesh = make_mesh(config.get("mesh"))
  check_batch_split(registry, mesh)
  model_config = ModelConfig.from_config(config.model)
  check_shapes(registry, model_config)
  check_merge_experts(config.evals, model_config)
  for name, f in facts.items():
    if f.vocab_size is not None and f.vocab_size > model_config.text_vocab_size:
      raise ConfigError(f"datasets.{name}.tokenizer has {f.vocab_size} ids, more than "
                        f"model.text_vocab_size={model_config.text_vocab_size}.")
  table = task_table(registry)
  model = IMPModel(model_config, heads=tuple((n, f.num_classes) for n, f in facts.items()
                                             if f.num_classes),
                   modalities=tuple(sorted(model_modalities(registry, config.evals))),
                   num_tasks=len(table))
  param_axes = logical_axes(model)  # traced once: the optimizer's decay mask and the shardings
  tx = make_optimizer(config.optimizer, config.total_steps, param_axes)
  rules = get_rules(config.get("mesh_rules"))
  state = abstract_state(model, tx, config.seed)
  shardings = train_state_shardings(param_axes, tx, mesh, rules, state)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       state, shardings)
  ids = task_ids(table)
  specs = {t.name: StepSpec.from_task(t, ids[t.entry]) for t in registry}
  batches = {t.name: abstract_batch(t, model_config, labelled=facts[t.dataset].num_classes > 0)
             for t in registry}
  schedule = schedule_of(config)
  if schedule == "agd":
    programs = [TrainProgram(t.name, ("train", specs[t.name]), (t.name,)) for t in registry]
  else:
    names = tuple(t.name for t in registry)
    programs = [TrainProgram(f"weighted_sum of {len(names)} tasks",
                             ("train_weighted_sum", tuple(specs[n] for n in names)), names,
                             summed=True)]
  return Plan(config=config, facts=facts, registry=registry, sampler=sampler, schedule=schedule,
              model_config=model_config, model=model, tx=tx, mesh=mesh, rules=rules,
              state=state, shardings=shardings, specs=specs, task_table=table,
              batches=batches, programs=programs,
              remat_auto=config.model.get("remat_policy") == "auto")

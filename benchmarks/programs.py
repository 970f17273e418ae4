"""Compiled train steps of the real model on synthetic batches, for the model benchmarks.

The scan, remat, MoE, batching and GPU MFU benchmarks compare programs, not data pipelines.
Each builds a config (the default experiment's, with the benchmark's model and tasks, or a
paper experiment's), and from it the run's plan (`imp.plan.build_plan`), as training and the
dry run do: the model, optimizer, step functions, batch shapes and shardings are the plan's.
Only the batches differ: seeded random arrays of the plan's abstract batches.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from imp.config.digits import get_config as digits_config
from imp.parallel.mesh import batch_sharding
from imp.parallel.rules import under_rules
from imp.plan.plan import DatasetFacts, Plan, TrainProgram, build_plan
from imp.step.placement import init_sharded_state
from imp.step.state import TrainState

CLASSES = 10
DATASET = "digits"
# What the plan needs to know of the default experiment's dataset (scikit-learn digits: 1,437
# training images of 10 classes, each with the text of its class).
FACTS = {DATASET: DatasetFacts(train_examples=1437, num_classes=CLASSES,
                               modalities=("image", "text"))}
OPTIMIZER = dict(name="adam", learning_rate=1e-3, warmup_steps=0)  # a constant of the programs
TOTAL_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class TaskShape:
  """One benchmark task: its objective and the shapes of its batch.

  Attributes:
    objective: "softmax" (image classification) or "nce" (image against its class text).
    batch_size: examples per step.
    resolution: image side in pixels.
    text_length: tokens per text (nce only).
  """

  objective: str
  batch_size: int
  resolution: int
  text_length: int | None = None


@dataclasses.dataclass
class Program:
  """A compiled train step with its state and one batch to run it on."""

  compiled: Any
  state: TrainState
  batch: Any  # the batch (or tuple of batches) on the devices
  compile_seconds: float  # trace + lower + XLA compile
  lower_seconds: float = 0.0  # of which trace + lower to StableHLO (JAX's side)

  def __call__(self) -> Any:
    """Runs one step in place (the state is donated); returns the metrics to block on."""
    self.state, metrics = self.compiled(self.state, self.batch)
    return metrics

  @property
  def temp_bytes(self) -> int:
    """Compiler-estimated temporary memory of one step (activations, workspace)."""
    return int(self.compiled.memory_analysis().temp_size_in_bytes)

  @property
  def cost(self) -> dict[str, float]:
    """XLA's cost analysis of one step: {"flops", "bytes accessed"} (0 where not reported)."""
    analysis = self.compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis  # older JAX: a list
    return {key: float(analysis.get(key, 0.0)) for key in ("flops", "bytes accessed")}


def task_config(shape: TaskShape) -> dict[str, Any]:
  """The `config.tasks` entry of one benchmark task (one variant, "base")."""
  modalities = ("image", "text") if shape.objective == "nce" else ("image",)
  variant = dict(batch_size=shape.batch_size, resolution=shape.resolution)
  if shape.text_length:
    variant["text_length"] = shape.text_length
  return dict(dataset=DATASET, objective=shape.objective, modalities=modalities,
              variants=dict(base=variant))


def benchmark_config(model: Mapping[str, Any], tasks: Sequence[TaskShape],
                     ) -> ml_collections.ConfigDict:
  """The default experiment's config with `model` as config.model, `tasks` as its tasks
  (named task0, task1, ...) and no evaluation."""
  config = digits_config()
  config.model = dict(model)
  config.tasks = ml_collections.ConfigDict({f"task{i}": task_config(shape)
                                            for i, shape in enumerate(tasks)})
  config.evals = ml_collections.ConfigDict({})
  config.optimizer = dict(OPTIMIZER)
  config.total_steps = TOTAL_STEPS
  return config


def plan_of(model: Mapping[str, Any], tasks: Sequence[TaskShape]) -> Plan:
  """The plan of `benchmark_config(model, tasks)` (nothing allocated)."""
  return build_plan(benchmark_config(model, tasks), FACTS)


def synthetic_batch(abstract: Mapping[str, jax.ShapeDtypeStruct], seed: int = 0,
                    classes: int = CLASSES) -> dict[str, np.ndarray]:
  """Seeded random arrays of a plan's abstract batch: pixels uniform in [0, 255] (uint8, as
  the pipeline sends them), audio standard normal, text ids in [1, 255], labels in
  [0, classes)."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, leaf in abstract.items():
    if name in ("image", "video"):
      out[name] = rng.integers(0, 256, leaf.shape, np.uint8)
    elif name == "audio":
      out[name] = rng.standard_normal(leaf.shape).astype(leaf.dtype)
    elif name == "text":
      out[name] = rng.integers(1, 256, leaf.shape).astype(leaf.dtype)
    elif name == "label":
      out[name] = rng.integers(0, classes, leaf.shape).astype(leaf.dtype)
    else:
      raise ValueError(f"synthetic_batch: no generator for batch field {name!r}; known: "
                       "image, video, audio, text, label.")
  return out


def initial_state(plan: Plan) -> TrainState:
  """A fresh initial state in the plan's shardings (each program donates its own)."""
  return init_sharded_state(plan.model, plan.tx, plan.config.seed, plan.shardings)


def put(plan: Plan, batch: Any) -> Any:
  """A host batch (or tuple of batches) on the devices, split on rows as the loop splits it."""
  return jax.device_put(batch, batch_sharding(plan.mesh))


def compile_program(plan: Plan, step: Any, state: TrainState, batch: Any) -> Program:
  """Compiles a pure (state, batch) -> (state, metrics) step as the loop does (the plan's
  shardings and activation rules, the state donated), timing trace + lower and the whole
  compile."""
  start = time.perf_counter()
  lowered = jax.jit(under_rules(step, plan.mesh, plan.rules), donate_argnums=0,
                    in_shardings=plan.in_shardings,
                    out_shardings=plan.out_shardings).lower(state, batch)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return Program(compiled, state, batch, time.perf_counter() - start, lowered_at - start)


def compile_train_program(plan: Plan, program: TrainProgram, seed: int = 0) -> Program:
  """The plan's train program, compiled, with a fresh state and a synthetic batch."""
  abstract = plan.batch_of(program)
  host = (synthetic_batch(abstract, seed) if isinstance(abstract, dict) else
          tuple(synthetic_batch(b, seed + i) for i, b in enumerate(abstract)))
  state, batch = initial_state(plan), put(plan, host)
  return compile_program(plan, plan.step_fn(program, state, batch), state, batch)


def train_programs(plan: Plan, seed: int = 0) -> list[Program]:
  """Every train program of the plan, compiled, each with its own state and batch (task i's
  batch seeded with seed + i)."""
  return [compile_train_program(plan, p, seed + i) for i, p in enumerate(plan.programs)]


def train_program(model: Mapping[str, Any], task: TaskShape) -> Program:
  """The compiled AGD train step of one task for `model` (a `config.model` mapping)."""
  (program,) = train_programs(plan_of(model, [task]))
  return program

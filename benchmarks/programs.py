"""Compiled train steps of the real model on synthetic batches, for the model benchmarks.

The scan, remat, MoE and batching benchmarks compare programs, not data pipelines, so their
batches are seeded random arrays of the shapes the digits tasks use.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from imp.model import IMPModel, ModelConfig
from imp.train.state import TrainState, init_state, make_optimizer
from imp.train.step import StepSpec, make_train_step

CLASSES = 10
HEAD = "digits"


@dataclasses.dataclass
class Program:
  """A compiled train step with its state and one batch to run it on."""

  compiled: Any
  state: TrainState
  batch: dict[str, Any]
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


def synthetic_batch(batch_size: int, resolution: int, text_length: int | None = None,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """image uint8 [B, R, R, 1] (as the pipeline sends it), label int32 [B] and, with
  text_length, text int32 [B, L]."""
  rng = np.random.default_rng(seed)
  batch = {"image": rng.integers(0, 256, (batch_size, resolution, resolution, 1), np.uint8),
           "label": rng.integers(0, CLASSES, batch_size).astype(np.int32)}
  if text_length:
    batch["text"] = rng.integers(1, 256, (batch_size, text_length)).astype(np.int32)
  return batch


def build_model(model: Mapping[str, Any]) -> IMPModel:
  """The IMP model from a `config.model` mapping, with the digits head and image + text."""
  return IMPModel(ModelConfig.from_config(dict(model)), heads=((HEAD, CLASSES),),
                  modalities=("image", "text"))


def spec_for(objective: str) -> StepSpec:
  modalities = ("image", "text") if objective == "nce" else ("image",)
  return StepSpec(objective, HEAD, modalities)


def setup(model: Mapping[str, Any]) -> tuple[IMPModel, Any, TrainState]:
  """(model, Adam optimizer, initial state) for a `config.model` mapping."""
  imp_model = build_model(model)
  tx = make_optimizer(dict(name="adam", learning_rate=1e-3, warmup_steps=0), 1000)
  return imp_model, tx, init_state(imp_model, tx, seed=0)


def compile_program(step: Any, state: TrainState, batch: Any) -> Program:
  """Compiles a pure (state, batch) -> (state, metrics) step, timing trace + compile."""
  start = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=0).lower(state, batch)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return Program(compiled, state, batch, time.perf_counter() - start, lowered_at - start)


def train_program(model: Mapping[str, Any], batch: dict[str, np.ndarray],
                  objective: str = "softmax") -> Program:
  """Compiles the AGD train step of `model` for `batch`."""
  imp_model, tx, state = setup(model)
  batch = jax.device_put(batch)
  step = make_train_step(imp_model, tx, spec_for(objective), state, batch)
  return compile_program(step, state, batch)

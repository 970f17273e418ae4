"""Where the train state lives on the mesh: its shardings, built abstractly, and a sharded init.

Parameters are initialised directly into their shardings (one jitted init with
`out_shardings`), so no device ever holds the whole model: what a pod needs, and what lets
the dry run plan a model that does not fit one device.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import Mesh

from imp.model import IMPModel
from imp.parallel.rules import Rules, param_shardings, state_shardings
from imp.step.state import TrainState, init_state


def abstract_state(model: IMPModel, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """The TrainState as ShapeDtypeStructs (jax.eval_shape: nothing is allocated)."""
  return jax.eval_shape(lambda: init_state(model, tx, seed))


def train_state_shardings(param_axes: Any, tx: optax.GradientTransformation, mesh: Mesh,
                          rules: Rules, abstract: TrainState) -> TrainState:
  """NamedSharding of every TrainState leaf, from the parameters' logical axes
  (`logical_axes(model)`) and `rules`."""
  params = param_shardings(param_axes, abstract.params, mesh, rules)
  return state_shardings(abstract, params, tx, mesh)


def init_sharded_state(model: IMPModel, tx: optax.GradientTransformation, seed: int,
                       shardings: TrainState) -> TrainState:
  """init_state, computed straight into `shardings` (same values as an unsharded init)."""
  return jax.jit(lambda: init_state(model, tx, seed), out_shardings=shardings)()


def describe(shardings: Any) -> dict[str, str]:
  """path -> PartitionSpec text of every leaf, for logs and tests."""
  return {jax.tree_util.keystr(path): str(s.spec)
          for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}

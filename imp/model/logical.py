"""Initialisers that attach logical axis names to every parameter.

Logical names ("embed", "mlp", "heads", "kv", "layers", "classes", ...) describe what a
dimension is; mesh rules in config map them to devices. Every parameter gets one name per
dimension, so a sharding rule set can place all of them.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import flax.linen as nn
import jax


def kernel(*axes: str):
  return nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)


def zeros(*axes: str):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones(*axes: str):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def normal(stddev: float, *axes: str):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=stddev), axes)


def layer_norm(name: str, dtype: str = "float32", param_dtype: str = "float32") -> nn.LayerNorm:
  # Flax keeps the statistics in at least float32 whatever `dtype` (the output's).
  return nn.LayerNorm(name=name, dtype=dtype, param_dtype=param_dtype,
                      scale_init=ones("embed"), bias_init=zeros("embed"))



# (logical name, mesh axes) pairs that `constrain` binds to; set while a step is traced
# (imp.parallel.rules.activation_rules). Kept apart from flax's own `nn.logical_axis_rules`,
# which would also constrain every parameter inside the step.
_ACTIVATION_RULES: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "imp_activation_rules", default=None)


@contextlib.contextmanager
def activation_rules(rules: tuple) -> Iterator[None]:
  token = _ACTIVATION_RULES.set(tuple(rules))
  try:
    yield
  finally:
    _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, *axes: str | None) -> jax.Array:
  """x with a sharding constraint from logical names, one per dimension (None: free).

  Binds only while a step is traced under `imp.parallel.rules.activation_rules` (a mesh and a
  rules table in context); elsewhere, e.g. on one device, it returns x unchanged. A dimension
  its mesh axes do not divide (a single routing group, say) is left to the compiler.
  """
  rules, mesh = _ACTIVATION_RULES.get(), jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  table, spec = dict(rules), []
  for size, name in zip(x.shape, axes, strict=True):
    mesh_axes = table.get(name) if name else None
    names = () if mesh_axes is None else (
        (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes))
    split = math.prod(mesh.shape[a] for a in names)
    spec.append(mesh_axes if names and size % split == 0 else None)
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(*spec))

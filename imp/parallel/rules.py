"""Logical-axis rules: which mesh axes shard each named dimension, one preset per topology.

Every parameter names its dimensions ("layers", "embed", "mlp", "heads", "kv", "expert", ...;
imp/model/logical.py). A preset (config key `mesh_rules`) maps each logical name to mesh axes
(data, fsdp, expert, tensor) or to None (replicated). The same table drives the shardings of
parameters, of optimizer state (optax leaves that mirror a parameter take its sharding) and
the activation constraints the model places with `imp.model.logical.constrain`.

Activation names (not parameter names):
  batch         the example axis of a batch and of the tokens: split over every axis that holds
                different examples (data, fsdp and expert, as GShard/MaxText do);
  expert_group  the group axis G of MoE dispatch buffers [G, E, C, D]: the batch axes less
                `expert`, which shards E instead. Moving tokens from [G, S, D] (G over expert)
                to [G, E, C, D] (E over expert) is the all-to-all of expert parallelism.

Presets:
  replicated  pure data parallelism: every parameter on every device.
  expert      experts split over `expert`; everything else replicated.
  fsdp        experts over `expert`, the model width ("embed") over `fsdp` (ZeRO-3 style:
              gathered per layer in the forward pass), and hidden/head/vocab dimensions over
              `tensor` (Megatron style). Axes of size 1 cost nothing, so this is the default.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imp.model import logical
from imp.parallel.mesh import BATCH_AXES

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Dimensions no preset shards: the scan axis, small per-dataset/per-grid tables, head dims,
# the 8-bit routing attributes (imp/model/conditions.py) and the Perceiver's few latents.
_UNSHARDED = ("layers", "kv", "classes", "common", "patch", "pos_0", "pos_1", "pos_2",
              "attribute", "latents")
_GROUP_AXES = tuple(a for a in BATCH_AXES if a != "expert")


def _preset(**mapping: MeshAxes) -> Rules:
  table = {name: None for name in _UNSHARDED}
  table.update({"embed": None, "mlp": None, "heads": None, "vocab": None})
  table.update(mapping)
  return tuple(table.items())


RULES: dict[str, Rules] = {
    "replicated": _preset(expert=None, batch=BATCH_AXES, expert_group=BATCH_AXES),
    "expert": _preset(expert="expert", batch=BATCH_AXES, expert_group=_GROUP_AXES),
    "fsdp": _preset(expert="expert", embed="fsdp", mlp="tensor", heads="tensor",
                    vocab="tensor", batch=BATCH_AXES, expert_group=_GROUP_AXES),
}
DEFAULT_RULES = "fsdp"


def get_rules(name: str | None) -> Rules:
  """The preset `config.mesh_rules` names (default "fsdp")."""
  name = DEFAULT_RULES if name is None else name
  if name not in RULES:
    raise ValueError(f"config.mesh_rules={name!r} is not a rules preset; valid: "
                     f"{', '.join(RULES)}.")
  return RULES[name]


def _axes_size(mesh: Mesh, axes: MeshAxes) -> int:
  if axes is None:
    return 1
  return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def spec_for(path: str, logical: PartitionSpec, shape: tuple[int, ...], mesh: Mesh,
             rules: Rules) -> PartitionSpec:
  """The mesh PartitionSpec of one parameter from its logical names.

  Raises:
    ValueError: a logical name the rules do not know, a mesh axis used twice, or a dimension
      that the mesh axes do not divide (naming the parameter, its shape and the axes).
  """
  table = dict(rules)
  out, used = [], set()
  for dim, name in enumerate(logical):
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise ValueError(f"parameter {path} has logical axis {name!r}, which the mesh rules do "
                       f"not map; known: {', '.join(sorted(table))} (imp/parallel/rules.py).")
    axes = table[name]
    names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    if used & set(names):
      raise ValueError(f"parameter {path}: mesh axes {names} are used by two dimensions.")
    used |= set(names)
    size = _axes_size(mesh, axes)
    if shape[dim] % size:
      raise ValueError(
          f"parameter {path} {tuple(shape)}: dimension {dim} ({name!r}, size {shape[dim]}) "
          f"does not split over mesh axes {names} of size {size}; change config.mesh or "
          "config.mesh_rules.")
    out.append(axes)
  return PartitionSpec(*out)


def param_shardings(axes: Any, abstract_params: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedSharding of every parameter.

  Args:
    axes: PartitionSpec of logical names per parameter (`imp.step.state.logical_axes`).
    abstract_params: arrays or ShapeDtypeStructs with the same structure.
  """
  is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
  flat_axes, treedef = jax.tree.flatten(axes, is_leaf=is_spec)
  leaves = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  if len(leaves) != len(flat_axes):
    raise ValueError(f"logical axes name {len(flat_axes)} parameters, the model has "
                     f"{len(leaves)}.")
  shardings = [
      NamedSharding(mesh, spec_for(jax.tree_util.keystr(path), spec, leaf.shape, mesh, rules))
      for (path, leaf), spec in zip(leaves, flat_axes, strict=True)]
  return jax.tree.unflatten(treedef, shardings)


def state_shardings(state: Any, params: Any, tx: optax.GradientTransformation,
                    mesh: Mesh) -> Any:
  """Shardings of a TrainState: `params` for the parameters, optimizer leaves that mirror a
  parameter (Adam's mu and nu) follow it, and counters, step and RNG are replicated.

  Args:
    state: a TrainState of arrays or ShapeDtypeStructs.
    params: the parameter shardings (`param_shardings`).
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  opt = optax.tree_map_params(tx, lambda _, s: s, state.opt_state, params,
                              transform_non_params=lambda _: replicated)
  # tree_map_params leaves optax's empty states (e.g. EmptyState) as they are; the remaining
  # leaves are arrays whose sharding is now named.
  return state.replace(step=replicated, params=params, opt_state=opt, rng=replicated)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Binds the model's `logical.constrain` calls to `mesh` and `rules` while a step
  is traced; outside it they are no-ops, so the model runs unchanged on one device."""
  # The abstract mesh (unlike jax.set_mesh) may be set while jit traces.
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), logical.activation_rules(rules):
    yield


def under_rules(fn, mesh: Mesh, rules: Rules):
  """`fn` traced with the activation rules of `mesh` (for jit/lower)."""

  def wrapped(*args, **kwargs):
    with activation_rules(mesh, rules):
      return fn(*args, **kwargs)

  return wrapped

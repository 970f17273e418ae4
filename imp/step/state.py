"""Train state and the optimizer built from config."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from imp.config import schema
from imp.model import IMPModel

OPTIMIZERS = {"adam": optax.adam, "adamw": optax.adamw}
SCHEDULES = ("cosine", "constant")
_OPTIMIZER_KEYS = schema.keys_of("optimizer")  # declared once, in imp/config/schema.py
# Leading logical axes along which a parameter is a stack of copies (scanned layers, experts)
# rather than a dimension of its own: a stacked LayerNorm scale is [layers, embed], still a
# vector, while a router kernel [layers, embed, expert] is a matrix.
STACK_AXES = ("layers", "expert")


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes.

  Attributes:
    step: int32 [] steps taken.
    params: model parameters (unboxed; logical axes live in `IMPModel` metadata).
    opt_state: optax state.
    rng: uint32 [2] base key; a step's key is `fold_in(rng, step)`.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def learning_rate_schedule(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  """Linear warm-up, then cosine decay to `end_lr_fraction` of the peak (or constant), from
  the optimizer settings with their defaults filled in (`schema.filled`)."""
  peak = float(cfg["learning_rate"])
  warmup, schedule = int(cfg["warmup_steps"]), cfg["schedule"]
  if schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule={schedule!r}; valid: {', '.join(SCHEDULES)}.")
  if schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
        [max(warmup, 1)])
  return optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
      end_value=peak * float(cfg["end_lr_fraction"]))


def float32_moments(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` with its state (Adam's moments) in float32 whatever the parameters' dtype.

  Under `model.param_dtype="bfloat16"` the inner optimizer sees float32 copies of the
  gradients and parameters; the updates come back in each parameter's dtype.
  """
  up = lambda tree: jax.tree.map(  # noqa: E731
      lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

  def update(grads, state, params=None):
    updates, state = tx.update(up(grads), state, None if params is None else up(params))
    return jax.tree.map(lambda u, g: u.astype(g.dtype), updates, grads), state

  return optax.GradientTransformation(lambda params: tx.init(up(params)), update)


def decays(axes: PartitionSpec) -> bool:
  """Whether weight decay applies to a parameter with these logical axes: matrices only.

  As DeiT (timm) and big_vision do, biases, norm scales, LayerScale, the logit temperature and
  position tables keep their scale; the test is on logical axes, not `ndim`, because a scanned
  layer stacks its vectors into [layers, ...] arrays and an MoE layer into [expert, ...] ones.
  """
  own = list(axes)
  while own and own[0] in STACK_AXES:
    own.pop(0)
  return len(own) >= 2 and not any(str(a).startswith("pos_") for a in own)


def weight_decay_mask(param_axes: Any) -> Any:
  """Bool per parameter (`decays`), from the tree of `logical_axes(model)`."""
  return jax.tree.map(decays, param_axes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def make_optimizer(cfg: Mapping[str, Any], total_steps: int,
                   param_axes: Any = None) -> optax.GradientTransformation:
  """Adam/AdamW with a warm-up + cosine schedule and global-norm gradient clipping.

  `param_axes` (`logical_axes(model)`) tells AdamW which parameters are matrices (`decays`);
  only a run with weight decay needs it.
  """
  unknown = sorted(set(cfg) - set(_OPTIMIZER_KEYS))
  if unknown:
    raise ValueError(
        f"optimizer.{unknown[0]} is not an optimizer setting; valid: {', '.join(_OPTIMIZER_KEYS)}.")
  cfg = schema.filled(cfg, "optimizer")  # every setting, the unset ones at their defaults
  name = cfg["name"]
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name={name!r}; valid: {', '.join(OPTIMIZERS)}.")
  kwargs = {k: float(cfg[k]) for k in ("b1", "b2", "eps")}
  if name == "adamw":
    kwargs["weight_decay"] = float(cfg["weight_decay"])
    if kwargs["weight_decay"]:
      if param_axes is None:
        raise ValueError("optimizer.weight_decay: make_optimizer needs the model's param_axes "
                         "(imp.step.state.logical_axes) to decay its matrices only.")
      kwargs["mask"] = weight_decay_mask(param_axes)
  elif cfg["weight_decay"]:
    raise ValueError("optimizer.weight_decay needs optimizer.name='adamw'.")
  parts = []
  if cfg["grad_clip_norm"]:
    parts.append(optax.clip_by_global_norm(float(cfg["grad_clip_norm"])))
  parts.append(OPTIMIZERS[name](learning_rate_schedule(cfg, total_steps), **kwargs))
  return float32_moments(optax.chain(*parts))


def init_state(model: IMPModel, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """Initialises every parameter (all embedders and heads) and the optimizer state."""
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  inputs = {m: model.config.dummy_input(m) for m in model.modalities}
  variables = jax.jit(model.init, static_argnums=2)(init_rng, inputs, model.init_request())
  params = nn.unbox(variables["params"])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=state_rng)


def logical_axes(model: IMPModel) -> Any:
  """Logical axis names of every parameter, e.g. ("layers", "embed", "mlp")."""
  inputs = {m: model.config.dummy_input(m) for m in model.modalities}
  init = functools.partial(model.init, request=model.init_request())
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0), inputs)
  return nn.get_partition_spec(abstract)["params"]

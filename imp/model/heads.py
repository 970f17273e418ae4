"""Classifier heads: a linear layer, optionally followed by BatchNorm (M3SAT §3, Table 15).

M3SAT's task heads are "a linear layer with normalization": BatchNorm follows the Linear
layer (Tables 13-15), with PyTorch's BatchNorm1d semantics, which these follow:
  train: y = (x - mean_B) / sqrt(var_B + eps) * scale + bias, with the batch's mean and biased
         variance; the running averages move as r <- (1 - momentum) r + momentum s, where s
         is the batch mean, or the batch variance with Bessel's correction (n / (n - 1));
  eval:  the same with the running mean and variance.

Where the running statistics live: in `params`, next to scale and bias (`running_mean`,
`running_var`), so checkpoints, evaluation and the dry run carry them with no change to the
train state. They get no gradient (the train forward does not use them), so Adam leaves them
exactly where they are (and AdamW decays matrices only); in training the head sows their new
values into the "batch_stats" collection and the train step writes them into `params` after
the update (`with_running_stats`). A forward pass that does not make "batch_stats" mutable
(baselines, analysis) leaves them as they were.

Shapes: B batch, D features, C classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from imp.model import logical

Array = jax.Array

BATCH_STATS = "batch_stats"  # the collection the head sows its new running statistics into


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
  """Classifier-head settings (config key `model.heads`).

  Attributes:
    batch_norm: BatchNorm after each classifier's linear layer (M3SAT); False: linear only.
    momentum: weight of the batch in the running statistics (PyTorch's convention; 0.1).
    epsilon: added to the variance (PyTorch: 1e-5).
  """

  batch_norm: bool = False
  momentum: float = 0.1
  epsilon: float = 1e-5

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | None) -> HeadsConfig:
    cfg = dict(cfg or {})
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(cfg) - set(fields))
    if unknown:
      raise ValueError(f"model.heads.{unknown[0]} is not a head setting; valid: "
                       f"{', '.join(fields)}.")
    heads = cls(**cfg)
    if not isinstance(heads.batch_norm, bool):
      raise ValueError(f"model.heads.batch_norm={heads.batch_norm!r} must be True or False.")
    if not 0.0 < heads.momentum <= 1.0:
      raise ValueError(f"model.heads.momentum={heads.momentum!r} must be in (0, 1].")
    if not heads.epsilon > 0.0:
      raise ValueError(f"model.heads.epsilon={heads.epsilon!r} must be > 0.")
    return heads


class HeadBatchNorm(nn.Module):
  """BatchNorm over the batch axis of x [B, C] (module docstring); returns [B, C] float32."""

  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    c = x.shape[-1]
    scale = self.param("scale", logical.ones("classes"), (c,))
    bias = self.param("bias", logical.zeros("classes"), (c,))
    running_mean = self.param("running_mean", logical.zeros("classes"), (c,))
    running_var = self.param("running_var", logical.ones("classes"), (c,))
    x = x.astype(jnp.float32)
    if train:
      n = x.shape[0]
      mean, var = x.mean(0), x.var(0)
      unbiased = var * (n / max(n - 1, 1))
      # Statistics are not learned: nothing differentiates through their update.
      m = self.momentum
      self.sow(BATCH_STATS, "running_mean",
               jax.lax.stop_gradient((1 - m) * running_mean + m * mean),
               init_fn=lambda: None, reduce_fn=lambda _, new: new)
      self.sow(BATCH_STATS, "running_var",
               jax.lax.stop_gradient((1 - m) * running_var + m * unbiased),
               init_fn=lambda: None, reduce_fn=lambda _, new: new)
    else:
      mean, var = running_mean, running_var
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class ClassifierHead(nn.Module):
  """Linear -> BatchNorm: pooled [B, D] -> logits [B, C]. Zero-initialised linear layer, as
  the plain heads (uniform predictions at the start)."""

  num_classes: int
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    # The linear layer follows the precision policy; BatchNorm and its statistics are float32.
    logits = nn.Dense(self.num_classes, kernel_init=logical.zeros("embed", "classes"),
                      bias_init=logical.zeros("classes"), dtype=self.dtype,
                      param_dtype=self.param_dtype, name="dense")(x)
    return HeadBatchNorm(self.momentum, self.epsilon, name="batch_norm")(logits, train=train)


def with_running_stats(params: Any, sown: Mapping[str, Any] | None) -> Any:
  """params with every leaf that `sown` (a "batch_stats" collection) holds replaced by it.

  The sown tree has the parameters' module paths (e.g. classifiers_x/batch_norm/running_mean).
  """
  if not sown:
    return params
  flat = traverse_util.flatten_dict(dict(params))
  for path, value in traverse_util.flatten_dict(dict(sown)).items():
    if path not in flat:
      raise KeyError(f"batch statistic {'/'.join(path)} has no parameter of that path.")
    flat[path] = value.astype(flat[path].dtype)
  return traverse_util.unflatten_dict(flat)

"""Initialisers that attach logical axis names to every parameter.

Logical names ("embed", "mlp", "heads", "kv", "layers", "classes", ...) describe what a
dimension is; mesh rules in config map them to devices. Every parameter gets one name per
dimension, so a sharding rule set can place all of them.
"""

from __future__ import annotations

import flax.linen as nn


def kernel(*axes: str):
  return nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)


def zeros(*axes: str):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def normal(stddev: float, *axes: str):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=stddev), axes)


def layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(name=name, scale_init=nn.with_logical_partitioning(
      nn.initializers.ones_init(), ("embed",)), bias_init=zeros("embed"))

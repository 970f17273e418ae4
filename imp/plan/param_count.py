"""Parameter counts: total (sparse) and per token (what one token's forward pass touches)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec


def count_params(params: Any, num_experts: int = 0, experts_per_token: float = 1.0,
                 exclude: tuple[str, ...] = ()) -> dict[str, int]:
  """Counts parameters of a (possibly abstract) parameter tree.

  Args:
    params: arrays or ShapeDtypeStructs.
    num_experts: E of the MoE layers (0 for dense).
    experts_per_token: experts one token passes through on average: 1 for top-1 and for
      expert choice at capacity factor 1.0 (E experts x S/E slots = S token-slots), k for
      top-k.
    exclude: top-level parameter names to leave out (e.g. other modalities' embedders).

  Returns:
    {"total": all parameters, "per_token": dense parameters plus experts_per_token / E of
     the expert parameters, "experts": expert parameters}.
  """
  total = experts = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys and keys[0] in exclude:
      continue
    n = int(np.prod(leaf.shape))
    total += n
    if "experts" in keys:
      experts += n
  per_token = total - experts
  if num_experts:
    per_token += int(round(experts * experts_per_token / num_experts))
  return {"total": total, "per_token": per_token, "experts": experts}


def merged_param_count(params: Any, axes: Any, num_experts: int, k: int) -> int:
  """Parameters of the model with each MoE layer's experts merged for one data-independent
  condition (imp.model.expert_merge): what inference under that condition holds.

  Args:
    params: the routed model's parameters (arrays or ShapeDtypeStructs).
    axes: their logical axis names (`imp.step.state.logical_axes`): a leaf with an "expert"
      axis holds experts.
    num_experts, k: E and the experts each condition chooses.

  Linear experts (attention projections) merge into one [D, O] projection: 1/E of theirs. FFN
  experts (an `experts` subtree) merge into one MLP of hidden width k * H: k/E of `wi`,
  `wi_bias` and `wo`, and 1/E of `wo_bias` (the gate-weighted sum of the k biases). Routers
  and the condition embeddings only choose the experts and are gone.
  """
  total = 0.0
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  specs = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, PartitionSpec | tuple)
                          or x is None)
  for (path, leaf), spec in zip(leaves, specs, strict=True):
    keys = [getattr(key, "key", str(key)) for key in path]
    if keys[0] == "condition" or any(key.startswith("router") for key in keys):
      continue
    n = int(np.prod(leaf.shape))
    if spec is not None and "expert" in tuple(spec):
      n = n * (1 if "experts" not in keys or keys[-1] == "wo_bias" else k) / num_experts
    total += n
  return int(round(total))

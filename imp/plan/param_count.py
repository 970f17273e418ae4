"""Parameter counts: total (sparse) and per token (what one token's forward pass touches)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


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

"""How the encoder's layer stack is compiled, chosen by name or per backend: the remat
policies (`model.remat_policy`) and the scan's unroll (`model.scan_unroll`). Each choice keeps
the parameters and the math; it trades memory, compile time and step time."""

from __future__ import annotations

import jax

# Remat policies by name. "none" keeps every activation (no remat); "full" saves nothing and
# recomputes the whole block in the backward pass (what IMP uses); "dots_saveable" keeps matmul
# outputs and recomputes the cheap elementwise ops.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_block_outputs": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_out"),
}
# model.remat_policy="auto" tries these in order, least recomputation first, per train program
# (imp.plan.programs): the first whose compiled program fits the device's memory is kept.
REMAT_AUTO = ("none", "dots_saveable", "full")


def resolve_scan_unroll(unroll: int | str, units: int) -> int:
  """`model.scan_unroll` as an int, for a scan of `units` iterations. "auto": `units` (one
  iteration) on CPU, where the scanned loop ran up to 1.22x slower than unrolled layers
  (docs/benchmarks.md); 1 on GPU and TPU, where the scan keeps the compile at one layer's
  whatever the depth."""
  if unroll == "auto":
    return units if jax.default_backend() == "cpu" else 1
  if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
    raise ValueError(f"model.scan_unroll={unroll!r}: expects 'auto' or an int >= 1 (scanned "
                     "units per loop iteration).")
  return unroll

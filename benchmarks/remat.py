"""Remat: peak temporary memory and step time for no remat, full remat and dots-saveable.

IMP §3.1.1 reports 70-80% less memory for 18-20% longer steps with rematerialisation. Memory
is the compiler's estimate of the train step's temporary buffers
(`compiled.memory_analysis().temp_size_in_bytes`: activations kept for the backward pass plus
workspace); step time is the median of interleaved rounds on the same batch. Beside them,
XLA's cost analysis of each step (FLOPs and bytes accessed) says what remat trades: more
FLOPs for recomputation, fewer bytes moved. Which of the two sets the step time depends on
whether the device is compute-bound (the paper's TPUs) or memory-bound. The layers run as a
scan loop of one layer per iteration (`scan_unroll=1`), as IMP runs them on its TPUs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.measure import Report, Stat, interleaved, ratio
from benchmarks.programs import TaskShape, train_program

NAME = "remat"
GOAL = "70-80% less memory, 18-20% longer steps (paper)"
POLICIES = ("none", "full", "dots_saveable")
SIZES = {
    "quick": dict(model=dict(width=32, depth=2, num_heads=2, mlp_dim=128, embed_dim=32,
                             scan_unroll=1),
                  batch=dict(batch_size=8, resolution=16), rounds=2, repeats=2),
    "full": dict(model=dict(width=128, depth=8, num_heads=4, mlp_dim=512, embed_dim=64,
                            scan_unroll=1),
                 batch=dict(batch_size=32, resolution=16), rounds=5, repeats=3),
}


def matmul_gflops(n: int, rounds: int) -> float:
  """The device's dense f32 matmul rate on [n, n] x [n, n] (the compute-bound reference)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  dot = jax.jit(lambda x: x @ x).lower(a).compile()
  seconds = interleaved({"dot": lambda: dot(a)}, rounds=rounds, repeats=3)["dot"]
  return 2 * n**3 / Stat.of(seconds).median / 1e9


def benchmark(quick: bool) -> Report:
  size = SIZES["quick" if quick else "full"]
  task = TaskShape("softmax", **size["batch"])
  programs = {policy: train_program(dict(size["model"], text_max_length=24,
                                         remat_policy=policy), task)
              for policy in POLICIES}
  memory = {policy: p.temp_bytes for policy, p in programs.items()}
  cost = {policy: p.cost for policy, p in programs.items()}
  step_s = interleaved(programs, rounds=size["rounds"], repeats=size["repeats"])
  peak = matmul_gflops(256 if quick else 1024, size["rounds"])
  rows = [("dense f32 matmul on this device (compute-bound reference), GFLOP/s", f"{peak:.1f}",
           "")]
  data = {"model": size["model"], "batch": size["batch"], "policies": {},
          "matmul_gflops": peak}
  for policy in POLICIES:
    saved = 1.0 - memory[policy] / memory["none"]
    longer = ratio(step_s[policy], step_s["none"])
    rows.append((f"remat={policy}: temp memory, step time vs none",
                 f"{memory[policy] / 2**20:.1f} MiB ({100 * saved:.0f}% less), "
                 f"{longer.show(unit='x')}", GOAL if policy == "full" else ""))
    flops, moved = (cost[policy][k] / max(cost["none"][k], 1.0)
                    for k in ("flops", "bytes accessed"))
    achieved = cost[policy]["flops"] / Stat.of(step_s[policy]).median / 1e9
    rows.append((f"remat={policy}: XLA FLOPs | bytes accessed vs none, achieved GFLOP/s",
                 f"{flops:.2f}x | {moved:.2f}x, {achieved:.1f}", ""))
    data["policies"][policy] = {"temp_bytes": memory[policy], "memory_saved": saved,
                                "step_ms": Stat.of(step_s[policy]).scaled(1e3).to_json(),
                                "step_ratio_to_none": longer.to_json(), "cost": cost[policy],
                                "flops_vs_none": flops, "bytes_accessed_vs_none": moved,
                                "achieved_gflops": achieved}
  return Report(rows, data)

r"""MoE vs dense train-step time at equal FLOPs per token (issue 4's benchmark).

Every model is the digits encoder (4 layers, width 64) with MoE in every second layer, each
expert as wide as the dense FFN (256), so expert choice at capacity factor 1.0 does the dense
model's FFN FLOPs plus routing. Top-2 token choice at capacity factor 1.0 gives each expert
2x the slots, so it does up to twice the expert FLOPs. All variants are timed in one process,
interleaved round by round, on the same batches.

  python -m benchmarks.moe_vs_dense            # full: 7 rounds x 50 steps per variant
  python -m benchmarks.moe_vs_dense --quick    # 2 rounds x 5 steps, for tests
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import jax
import numpy as np

from benchmarks.measure import Report, interleaved, ratio
from benchmarks.programs import TaskShape, train_program

NAME = "moe_vs_dense"
GOAL = "expert choice ~1x dense"
BASE = dict(width=64, depth=4, num_heads=4, mlp_dim=256, embed_dim=64, text_max_length=24)
VARIANTS = {
    "dense": None,
    "expert_choice_e4": dict(num_experts=4, every=2, router="expert_choice"),
    "expert_choice_e16": dict(num_experts=16, every=2, router="expert_choice"),
    "top2_e4": dict(num_experts=4, every=2, router="top_k", router_args=dict(k=2)),
}
SHAPES = {"8x8 (16 tokens) x 64": (64, 8), "16x16 (64 tokens) x 16": (16, 16)}


def run(rounds: int, steps: int, shapes: tuple[str, ...] = tuple(SHAPES)) -> dict:
  """Per shape and variant: median ms per step, spread, and ratios to dense."""
  results = {}
  for shape_name in shapes:
    batch_size, size = SHAPES[shape_name]
    task = TaskShape("softmax", batch_size, size)
    programs = {name: train_program(dict(BASE, moe=moe) if moe else BASE, task)
                for name, moe in VARIANTS.items()}
    times = interleaved(programs, rounds=rounds, repeats=steps, warmup=3)
    results[shape_name] = {
        name: {"median_ms": 1e3 * float(np.median(t)),
               "spread_ms": 1e3 * float(np.max(t) - np.min(t)),
               "ratio_to_dense": ratio(t, times["dense"]).median}
        for name, t in times.items()}
    results[shape_name]["top2_over_expert_choice_e4"] = ratio(
        times["top2_e4"], times["expert_choice_e4"]).median
  return results


def benchmark(quick: bool) -> Report:
  """The registry entry (python -m benchmarks.run --only moe_vs_dense)."""
  rounds, steps = (2, 3) if quick else (5, 20)
  results = run(rounds, steps, tuple(SHAPES)[:1] if quick else tuple(SHAPES))
  rows = []
  for shape, r in results.items():
    for name in VARIANTS:
      if name != "dense":
        rows.append((f"{shape}: {name} / dense", f"{r[name]['ratio_to_dense']:.2f}x "
                     f"({r[name]['median_ms']:.1f} vs {r['dense']['median_ms']:.1f} ms)",
                     GOAL if name.startswith("expert_choice") else ""))
    rows.append((f"{shape}: top-2 / expert choice (E=4)",
                 f"{r['top2_over_expert_choice_e4']:.2f}x", ""))
  return Report(rows, {"rounds": rounds, "steps": steps, "results": results})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="2 rounds x 5 steps")
  parser.add_argument("--out", default="benchmarks/results/moe_vs_dense.json")
  args = parser.parse_args()
  rounds, steps = (2, 5) if args.quick else (7, 50)
  results = run(rounds, steps)
  print(f"train step time, median of {rounds} rounds x {steps} steps "
        f"({jax.devices()[0].device_kind}, {platform.machine()})")
  for shape, rows in results.items():
    print(f"\n{shape}")
    print(f"  {'variant':<20} {'ms/step':>9} {'spread':>8} {'/ dense':>8}")
    for name in VARIANTS:
      r = rows[name]
      print(f"  {name:<20} {r['median_ms']:9.2f} {r['spread_ms']:8.2f} "
            f"{r['ratio_to_dense']:8.2f}")
    print(f"  top-2 / expert choice (E=4): {rows['top2_over_expert_choice_e4']:.2f}")
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"device": jax.devices()[0].device_kind, "rounds": rounds,
                             "steps": steps, "results": results}, indent=2) + "\n")
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()

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
import time
from pathlib import Path

import jax
import numpy as np

from imp.model import IMPModel, ModelConfig
from imp.train.state import init_state, make_optimizer
from imp.train.step import StepSpec, make_train_step

BASE = dict(width=64, depth=4, num_heads=4, mlp_dim=256, embed_dim=64, text_max_length=24)
VARIANTS = {
    "dense": None,
    "expert_choice_e4": dict(num_experts=4, every=2, router="expert_choice"),
    "expert_choice_e16": dict(num_experts=16, every=2, router="expert_choice"),
    "top2_e4": dict(num_experts=4, every=2, router="top_k", router_args=dict(k=2)),
}
SHAPES = {"8x8 (16 tokens) x 64": (64, 8), "16x16 (64 tokens) x 16": (16, 16)}


def _program(moe, batch):
  cfg = ModelConfig.from_config(dict(BASE, moe=moe) if moe else BASE)
  model = IMPModel(cfg, heads=(("digits", 10),), modalities=("image",))
  tx = make_optimizer(dict(name="adam", learning_rate=1e-3, warmup_steps=0), 1000)
  state = init_state(model, tx, seed=0)
  step = make_train_step(model, tx, StepSpec("softmax", "digits", ("image",)), state, batch)
  return jax.jit(step, donate_argnums=0).lower(state, batch).compile(), state


def run(rounds: int, steps: int) -> dict:
  rng = np.random.default_rng(0)
  results = {}
  for shape_name, (batch_size, size) in SHAPES.items():
    batch = {"image": rng.normal(size=(batch_size, size, size, 1)).astype(np.float32),
             "label": rng.integers(0, 10, batch_size).astype(np.int32)}
    programs = {name: _program(moe, batch) for name, moe in VARIANTS.items()}
    states = {name: state for name, (_, state) in programs.items()}
    times = {name: [] for name in VARIANTS}
    for name, (program, _) in programs.items():  # warm-up
      for _ in range(3):
        states[name], metrics = program(states[name], batch)
      jax.block_until_ready(metrics)
    for _ in range(rounds):
      for name, (program, _) in programs.items():
        start = time.perf_counter()
        for _ in range(steps):
          states[name], metrics = program(states[name], batch)
        jax.block_until_ready(metrics)
        times[name].append((time.perf_counter() - start) / steps)
    dense = float(np.median(times["dense"]))
    results[shape_name] = {
        name: {"median_ms": 1e3 * float(np.median(t)),
               "spread_ms": 1e3 * float(np.max(t) - np.min(t)),
               "ratio_to_dense": float(np.median(t)) / dense}
        for name, t in times.items()}
    results[shape_name]["top2_over_expert_choice_e4"] = (
        float(np.median(times["top2_e4"])) / float(np.median(times["expert_choice_e4"])))
  return results


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

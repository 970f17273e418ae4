"""AGD vs mixed batching vs gradient accumulation as heterogeneous tasks grow from 2 to 8.

One round trains every task once:
- AGD: one compiled step per task, each at its own shapes (n updates per round).
- Mixed batching (imp/train/baselines.py): all tasks' examples in one batch, each input padded
  to the union of the tasks' shapes and masked; one update.
- Gradient accumulation (same module): each task's mini-batch at its own shapes in one
  program, gradients summed; one update.

Useful tokens are the tokens of each task at its own shape (AGD and accumulation compute only
these; mixed batching also computes the padding). Reported: useful tokens per second (median of
interleaved rounds) and peak temporary memory from the compiler (AGD: the largest of its
programs, as they run one at a time).
"""

from __future__ import annotations

import dataclasses

from benchmarks.measure import Report, Stat, interleaved, ratio
from benchmarks.programs import (
  TaskShape,
  compile_program,
  initial_state,
  plan_of,
  put,
  synthetic_batch,
  train_programs,
)
from imp.train import baselines

NAME = "batching"
GOAL = "AGD >= baselines in tokens/s, memory of one task"
MODEL = dict(width=64, depth=4, num_heads=4, mlp_dim=256, embed_dim=64, text_max_length=24)
# 8 tasks of different shapes and losses (objective, batch size, resolution, text length).
TASKS = (TaskShape("softmax", 64, 8), TaskShape("nce", 16, 16, 24), TaskShape("softmax", 16, 16),
         TaskShape("nce", 64, 8, 12), TaskShape("softmax", 8, 24), TaskShape("nce", 32, 12, 16),
         TaskShape("softmax", 4, 32), TaskShape("nce", 8, 24, 8))
SIZES = {"quick": dict(counts=(2,), rounds=2, repeats=1),
         "full": dict(counts=(2, 4, 8), rounds=5, repeats=2)}


def benchmark(quick: bool) -> Report:
  size = SIZES["quick" if quick else "full"]
  plan = plan_of(MODEL, TASKS[:max(size["counts"])])  # AGD: the plan's programs, in task order
  agd = train_programs(plan)
  specs = [plan.specs[p.tasks[0]] for p in plan.programs]
  batches = [synthetic_batch(plan.batch_of(p), seed=i) for i, p in enumerate(plan.programs)]
  patch = plan.model_config.vision_patch
  rows, data = [], {"model": MODEL, "tasks": [dataclasses.astuple(t) for t in TASKS],
                    "counts": {}}
  for n in size["counts"]:
    mixed_batch, layout = baselines.mix_batches(specs[:n], batches[:n])
    state = initial_state(plan)
    mixed = compile_program(plan, baselines.make_mixed_step(plan.model, plan.tx, layout), state,
                            put(plan, mixed_batch))
    state = initial_state(plan)
    accumulate = compile_program(plan, baselines.make_accumulation_step(plan.model, plan.tx,
                                                                        specs[:n]),
                                 state, put(plan, tuple(batches[:n])))

    def agd_round(n=n):
      return [program() for program in agd[:n]]

    times = interleaved({"agd": agd_round, "mixed": mixed, "accumulation": accumulate},
                        rounds=size["rounds"], repeats=size["repeats"])
    useful = sum(baselines.useful_tokens(s, b, patch) for s, b in zip(specs[:n], batches[:n],
                                                                      strict=True))
    computed_mixed = sum(mixed_batch[m].shape[0] * (
        mixed_batch[m].shape[1] if m == "text" else
        (mixed_batch[m].shape[1] // patch[1]) * (mixed_batch[m].shape[2] // patch[2]))
        for m in ("image", "text") if m in mixed_batch)
    memory = {"agd": max(p.temp_bytes for p in agd[:n]), "mixed": mixed.temp_bytes,
              "accumulation": accumulate.temp_bytes}
    rate = {k: Stat.of([useful / t for t in v]) for k, v in times.items()}
    over = {k: ratio(times[k], times["agd"]) for k in ("mixed", "accumulation")}
    rows.append((f"{n} tasks: useful tokens/s, AGD | mixed | accumulation",
                 " | ".join(f"{rate[k].median / 1e3:.1f}k" for k in ("agd", "mixed",
                                                                     "accumulation")),
                 GOAL if n == max(size["counts"]) else ""))
    rows.append((f"{n} tasks: round time vs AGD, mixed | accumulation",
                 f"{over['mixed'].show(unit='x')} | {over['accumulation'].show(unit='x')}", ""))
    rows.append((f"{n} tasks: padding share of the mixed batch's tokens",
                 f"{100 * (1 - useful / computed_mixed):.0f}%", ""))
    rows.append((f"{n} tasks: peak temp memory MiB, AGD | mixed | accumulation",
                 " | ".join(f"{memory[k] / 2**20:.1f}" for k in ("agd", "mixed",
                                                                "accumulation")), ""))
    data["counts"][str(n)] = {
        "useful_tokens_per_round": useful, "mixed_tokens_computed": computed_mixed,
        "tokens_per_second": {k: v.to_json() for k, v in rate.items()},
        "round_time_over_agd": {k: v.to_json() for k, v in over.items()},
        "temp_bytes": memory}
  return Report(rows, data)

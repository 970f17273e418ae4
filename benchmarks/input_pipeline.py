"""Input pipeline: the share of step time the default experiment spends waiting for data.

Runs of the default experiment (its grain pipelines, batch sizes and model; without
evaluation). The loop times each `next()` on a task's iterator; summary.json reports that
time as `data_wait_share` of the whole loop, compiles and the final checkpoint included. Here
the fixed costs cancel as in `loop_overhead`: the share is (data wait of a long run - of a
short run) / (loop time outside compiles of the long run - of the short run).

It also pulls the same batches from the loop's grain iterators with no training
(`loop_overhead.pipeline_alone`) and reports the process CPU time that costs per step: the
input pipeline's own work, which on a 2-core host competes with XLA for the cores.
Figures (before and after the per-batch transforms of issue 19) are in docs/data.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.loop_overhead import loop_run, pipeline_alone
from benchmarks.measure import Report, Stat

NAME = "input_pipeline"
GOAL = "< 5% of step time"
SIZES = {"quick": dict(rounds=1, short=4, long=12), "full": dict(rounds=2, short=50, long=250)}


def benchmark(quick: bool) -> Report:
  size = SIZES["quick" if quick else "full"]
  share, step_ms, pipe_cpu_ms = [], [], []
  with tempfile.TemporaryDirectory() as root:
    root = Path(root)
    cache_dir = root / "compilation_cache"
    extra = size["long"] - size["short"]
    pipeline = pipeline_alone(extra, size["long"], cache_dir, root)
    for _ in range(size["rounds"]):
      pipe_cpu_ms.append(1e3 * pipeline()[1] / extra)
      short = loop_run(size["short"], size["long"], cache_dir, root)
      long = loop_run(size["long"], size["long"], cache_dir, root)
      stepping = long["stepping"] - short["stepping"]
      share.append((long["data_wait"] - short["data_wait"]) / stepping)
      step_ms.append(1e3 * stepping / (size["long"] - size["short"]))
  share_stat = Stat.of(share).scaled(100)
  return Report(
      rows=[("data wait / step time", share_stat.show(fmt="{:.1f}", unit="%"), GOAL),
            ("loop time per step", Stat.of(step_ms).show(unit=" ms"), ""),
            ("input pipeline alone, CPU per step", Stat.of(pipe_cpu_ms).show(unit=" ms"), "")],
      data={"steps": [size["short"], size["long"]],
            "data_wait_over_step_time": share_stat.to_json(),
            "ms_per_step": Stat.of(step_ms).to_json(),
            "pipeline_cpu_ms_per_step": Stat.of(pipe_cpu_ms).to_json(),
            "experiment": "imp.config.digits (default) without evals"})

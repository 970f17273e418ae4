"""Input pipeline: the share of step time the default experiment spends waiting for data.

A shortened run of the default experiment (its grain pipelines, batch sizes and model;
without evaluation). The loop times each `next()` on a task's iterator; summary.json reports
that time as `data_wait_share` of the whole loop. Here it is also divided by the loop time
outside compiles, the share of step time proper (compiles would otherwise dilute it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.loop_overhead import experiment
from benchmarks.measure import Report, Stat
from imp.train import loop

NAME = "input_pipeline"
GOAL = "< 5% of step time"
SIZES = {"quick": dict(rounds=1, steps=12), "full": dict(rounds=3, steps=200)}


def benchmark(quick: bool) -> Report:
  size = SIZES["quick" if quick else "full"]
  loop_share, step_share, step_ms = [], [], []
  with tempfile.TemporaryDirectory() as root:
    cache_dir = Path(root) / "compilation_cache"
    for r in range(size["rounds"]):
      summary = loop.train(experiment(size["steps"], cache_dir), Path(root) / f"run{r}")
      loop_seconds = summary["steps_this_run"] / summary["steps_per_second"]
      stepping = loop_seconds - summary["step_cache"]["compile_seconds"]
      wait = summary["data_wait_share"] * loop_seconds
      loop_share.append(summary["data_wait_share"])
      step_share.append(wait / stepping)
      step_ms.append(1e3 * stepping / summary["steps_this_run"])
  share, whole = Stat.of(step_share).scaled(100), Stat.of(loop_share).scaled(100)
  return Report(
      rows=[("data wait / step time (outside compiles)", share.show(fmt="{:.1f}", unit="%"),
             GOAL),
            ("data wait / loop time (summary.json data_wait_share)",
             whole.show(fmt="{:.1f}", unit="%"), ""),
            ("loop time per step outside compiles", Stat.of(step_ms).show(unit=" ms"), "")],
      data={"steps": size["steps"], "data_wait_over_step_time": share.to_json(),
            "data_wait_share": whole.to_json(), "ms_per_step": Stat.of(step_ms).to_json(),
            "experiment": "imp.configs.digits (default) without evals"})

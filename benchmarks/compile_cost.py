"""Compile cost of AGD over 20 task signatures, and JAX's persistent compilation cache.

The run is the default experiment with 20 distinct signatures: 2 objectives (classification,
label-text NCE) x 5 resolutions x 2 batch sizes, sampled uniformly. Measured per run:

- compile seconds (StepCache: trace, lower and compile of every program),
- XLA compiles after each task's first step (goal 0),
- the loop's time per step outside compiles, from which the compile share of a 2,000-step run
  is extrapolated: compile / (compile + 2000 x time per step),
- start-up with the persistent compilation cache cold (empty directory) and warm (a second
  process reading the directory the first filled): process wall time and compile seconds.

Each run is a separate Python process, so nothing is shared in memory between cold and warm.

  python -m benchmarks.compile_cost --run WORKDIR CACHE_DIR STEPS {quick,full}   (one run)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_collections

from benchmarks.measure import Report, Stat

NAME = "compile_cost"
GOAL_COMPILES = "0"
EXTRAPOLATE_STEPS = 2000
SIZES = {
    "quick": dict(rounds=1, steps=16, resolutions=(8, 16), batch_sizes=(8,)),
    "full": dict(rounds=2, steps=200, resolutions=(8, 12, 16, 20, 24), batch_sizes=(8, 16)),
}


def experiment(size: dict, total_steps: int, cache_dir: str) -> ml_collections.ConfigDict:
  """The default experiment with objectives x resolutions x batch sizes as its tasks."""
  from imp.config.digits import get_config

  config = get_config()
  config.total_steps = total_steps
  config.log_every = total_steps
  config.evals = ml_collections.ConfigDict({})
  config.checkpoint_best_metric = None
  config.compilation_cache_dir = cache_dir
  config.sampling = dict(weighting="uniform")
  variants = {f"r{r}_b{b}": dict(batch_size=b, resolution=r, text_length=24)
              for r in size["resolutions"] for b in size["batch_sizes"]}
  for entry in config.tasks.values():
    entry.variants = variants
  return config


def one_run(workdir: str, cache_dir: str, steps: int, size_name: str) -> dict:
  """Trains one run in this process; returns its summary."""
  from imp import experiment as imp_experiment

  return imp_experiment.train(experiment(SIZES[size_name], steps, cache_dir), workdir)


def _process(workdir: Path, cache_dir: Path, steps: int, size_name: str) -> dict:
  start = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.compile_cost", "--run", str(workdir), str(cache_dir),
       str(steps), size_name], cwd=Path(__file__).resolve().parents[1], capture_output=True,
      text=True, check=False)
  wall = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"compile_cost run failed:\n{proc.stderr[-3000:]}")
  summary = json.loads((workdir / "summary.json").read_text())
  return dict(summary, process_seconds=wall)


def benchmark(quick: bool) -> Report:
  size_name = "quick" if quick else "full"
  size = SIZES[size_name]
  signatures = 2 * len(size["resolutions"]) * len(size["batch_sizes"])
  cold, warm = [], []
  with tempfile.TemporaryDirectory() as root:
    for r in range(size["rounds"]):
      cache_dir = Path(root) / f"cache{r}"
      cold.append(_process(Path(root) / f"cold{r}", cache_dir, size["steps"], size_name))
      warm.append(_process(Path(root) / f"warm{r}", cache_dir, size["steps"], size_name))
  compile_s = Stat.of([s["step_cache"]["compile_seconds"] for s in cold])
  # Every program compiles before step 1, so the loop's steps/s has no compile time in it.
  step_s = Stat.of([1.0 / s["steps_per_second"] for s in cold])
  share = Stat.of([c / (c + EXTRAPOLATE_STEPS * t)
                   for c, t in zip(compile_s.samples, step_s.samples, strict=True)])
  after_warmup = max(s["step_cache"]["xla_compiles_after_warmup"] for s in cold + warm)
  programs = min(s["step_cache"]["size"] for s in cold)
  warm_compile = Stat.of([s["step_cache"]["compile_seconds"] for s in warm])
  cold_wall = Stat.of([s["process_seconds"] for s in cold])
  warm_wall = Stat.of([s["process_seconds"] for s in warm])
  return Report(
      rows=[(f"{signatures} signatures: programs compiled in {size['steps']} steps",
             f"{programs}", f"{signatures}"),
            ("compile seconds (cold cache)", compile_s.show(unit=" s"), ""),
            (f"compile share of a {EXTRAPOLATE_STEPS}-step run (extrapolated)",
             share.scaled(100).show(fmt="{:.1f}", unit="%"),
             "0.34% of a full run, 20 signatures (paper)"),
            ("XLA compiles after warm-up", f"{after_warmup}", GOAL_COMPILES),
            ("compile seconds, persistent cache cold / warm",
             f"{compile_s.median:.1f} / {warm_compile.median:.1f} s", "warm < cold"),
            ("process wall time, persistent cache cold / warm",
             f"{cold_wall.median:.1f} / {warm_wall.median:.1f} s", "warm < cold")],
      data={"signatures": signatures, "steps": size["steps"], "programs_compiled": programs,
            "compile_seconds_cold": compile_s.to_json(),
            "compile_seconds_warm": warm_compile.to_json(),
            "seconds_per_step": step_s.to_json(), "compile_share_2000_steps": share.to_json(),
            "xla_compiles_after_warmup": after_warmup,
            "process_seconds_cold": cold_wall.to_json(),
            "process_seconds_warm": warm_wall.to_json(),
            "note": "seconds per step = loop time / steps of the cold run (programs compile "
                    "before step 1); it includes the final checkpoint save."})


if __name__ == "__main__":
  if len(sys.argv) != 6 or sys.argv[1] != "--run":
    sys.exit(__doc__.splitlines()[-1].strip())
  one_run(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])

"""AGD loop overhead: the full training loop against the same compiled steps in a bare loop.

The full loop (`imp.train.loop.train`) samples the task of each step, pulls its batch from the
task's grain pipeline, looks its program up in the StepCache, buffers metrics and writes them
every `log_every` steps. The bare loop calls the same compiled programs in the same task order
on batches already in memory. Goal (IMP §3.1: AGD costs no more than its steps): full / bare
time per step <= 1.05.

A run of the loop also compiles, builds its pipelines and saves a final checkpoint; those
fixed costs cancel in the difference of a short and a long run with the same config, so the
loop's time per step is (loop time of the long run - loop time of the short run) / (extra
steps), each loop time minus its compile seconds. JAX's persistent compilation cache keeps the
repeated runs from compiling again.

Where the difference goes: the input pipeline alone (the same grain iterators in the loop's
task order, no training) is timed too, in wall time and in CPU time of the whole process.
Its CPU time per step is work the bare loop never does; on a host whose cores XLA already
keeps busy it cannot hide behind the step (on an accelerator host it runs beside the device).
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import jax
import ml_collections

from benchmarks.measure import Report, Stat, ratio
from benchmarks.programs import compile_program
from imp import experiment as imp_experiment
from imp.config.digits import get_config
from imp.data import task_dataset
from imp.parallel.mesh import put_batch

NAME = "loop_overhead"
GOAL = "<= 1.05x"
SIZES = {"quick": dict(rounds=1, short=4, long=12), "full": dict(rounds=3, short=50, long=250)}


def experiment(total_steps: int, cache_dir: Path,
               dataset: dict | None = None) -> ml_collections.ConfigDict:
  """The default experiment, without evaluation (it is not part of the per-step loop);
  `dataset` replaces its digits dataset's settings."""
  config = get_config()
  config.total_steps = total_steps
  if dataset is not None:
    config.datasets.digits = ml_collections.ConfigDict(dataset)
  config.evals = ml_collections.ConfigDict({})
  config.checkpoint_best_metric = None
  config.compilation_cache_dir = str(cache_dir)
  return config


def loop_run(steps: int, total_steps: int, cache_dir: Path, root: Path,
             dataset: dict | None = None) -> dict[str, float]:
  """A fresh run of `steps` steps: seconds of its loop (every program compiles before step 1,
  so none of it is compiling), and of data waits.

  Every run has the same total_steps (it sets the learning-rate schedule, a constant of the
  compiled programs), so all runs share the same programs and the persistent cache serves them.
  """
  workdir = Path(tempfile.mkdtemp(dir=root))
  summary = imp_experiment.train(experiment(total_steps, cache_dir, dataset), workdir,
                                 stop_after=steps)
  loop_seconds = summary["steps_this_run"] / summary["steps_per_second"]
  return {"stepping": loop_seconds, "data_wait": summary["data_wait_share"] * loop_seconds}


def bare_loop(steps: int, total_steps: int, cache_dir: Path, root: Path):
  """A call that runs `steps` compiled steps in the loop's task order on in-memory batches."""
  config = experiment(total_steps, cache_dir)
  workdir = Path(tempfile.mkdtemp(dir=root))
  exp = imp_experiment.build(config, workdir)
  programs, batches = [], []
  with imp_experiment.compilation_cache(config, workdir):
    for task in exp.registry:
      batch = next(iter(task_dataset(exp.sources[task.dataset], task, seed=0, num_threads=0,
                                     prefetch=0)))
      batch = put_batch(batch, exp.mesh)  # placed as the loop places it: same programs
      program = exp.plan.program_of((task.name,))  # the plan's program, compiled as the loop
      step = exp.plan.step_fn(program, exp.state, batch)
      programs.append(compile_program(exp.plan, step, exp.state, batch).compiled)
      batches.append(batch)
  schedule = exp.sampler.schedule(0, steps).tolist()
  state = [exp.state]

  def run():
    s = state[0]
    for index in schedule:
      s, metrics = programs[index](s, batches[index])
    state[0] = s
    return metrics

  return run


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
  return usage.ru_utime + usage.ru_stime


def pipeline_alone(steps: int, total_steps: int, cache_dir: Path, root: Path):
  """A call that pulls `steps` batches in the loop's task order from the loop's own grain
  iterators (no training); returns (wall seconds, process CPU seconds)."""
  exp = imp_experiment.build(experiment(total_steps, cache_dir), Path(tempfile.mkdtemp(dir=root)))
  iterators = imp_experiment.task_iterators(exp)
  schedule = [exp.registry[i].name for i in exp.sampler.schedule(0, steps).tolist()]

  def run() -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for name in schedule:
      iterators.next(name)
    return time.perf_counter() - wall, _cpu_seconds() - cpu

  run()  # warm-up: threads started, prefetch buffers filled
  return run


def benchmark(quick: bool) -> Report:
  size = SIZES["quick" if quick else "full"]
  extra = size["long"] - size["short"]
  with tempfile.TemporaryDirectory() as root:
    root = Path(root)
    cache_dir = root / "compilation_cache"
    bare = bare_loop(extra, size["long"], cache_dir, root)
    jax.block_until_ready(bare())  # warm-up; its compiles fill the persistent cache
    pipeline = pipeline_alone(extra, size["long"], cache_dir, root)
    full_times, bare_times, pipe_wall, pipe_cpu = [], [], [], []
    for _ in range(size["rounds"]):
      wall, cpu = pipeline()
      pipe_wall.append(wall / extra)
      pipe_cpu.append(cpu / extra)
      short = loop_run(size["short"], size["long"], cache_dir, root)["stepping"]
      long = loop_run(size["long"], size["long"], cache_dir, root)["stepping"]
      full_times.append((long - short) / extra)
      start = time.perf_counter()
      jax.block_until_ready(bare())
      bare_times.append((time.perf_counter() - start) / extra)
  overhead = ratio(full_times, bare_times)
  full, bare_stat = Stat.of(full_times).scaled(1e3), Stat.of(bare_times).scaled(1e3)
  pipe_wall_stat, pipe_cpu_stat = Stat.of(pipe_wall).scaled(1e3), Stat.of(pipe_cpu).scaled(1e3)
  pipe_share = ratio(pipe_cpu, bare_times)  # pipeline CPU time as a share of a bare step
  return Report(
      rows=[("full loop, ms/step", full.show(), ""),
            ("bare compiled steps, ms/step", bare_stat.show(), ""),
            ("full / bare time per step", overhead.show(unit="x"), GOAL),
            ("input pipeline alone (no training), wall | CPU ms per step",
             f"{pipe_wall_stat.median:.2f} | {pipe_cpu_stat.median:.2f}", ""),
            ("input pipeline CPU time / bare step time",
             f"{100 * pipe_share.median:.1f}% ({100 * pipe_share.low:.1f}-"
             f"{100 * pipe_share.high:.1f})", "")],
      data={"steps_per_round": extra, "full_ms_per_step": full.to_json(),
            "bare_ms_per_step": bare_stat.to_json(), "full_over_bare": overhead.to_json(),
            "pipeline_wall_ms_per_step": pipe_wall_stat.to_json(),
            "pipeline_cpu_ms_per_step": pipe_cpu_stat.to_json(),
            "pipeline_cpu_over_bare_step": pipe_share.to_json(),
            "input": dict(experiment(1, cache_dir).input),
            "experiment": "imp.config.digits (default) without evals"})

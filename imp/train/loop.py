"""The AGD training loop (IMP Algorithm 1), top to bottom.

  plan (open_run: sources -> Plan -> sharded state) -> resume (checkpoint read and checked)
  -> programs (every train and eval program compiled before step 1: table, programs.json,
  memory check) -> per-task grain iterators at the checkpoint's positions
  -> steps: task of step t -> its batch -> its compiled program -> metrics
  -> periodic evaluation and checkpoints -> summary

config.sampling.schedule picks the tasks of step t: "agd" (default) the one sampled task,
"weighted_sum" every task (M3SAT: one update on the weighted sum of all task losses).

Evaluation and expert-usage plots are end-of-run hooks the caller passes in (`Hooks`,
`imp.experiment` builds the default ones): this package imports neither `imp.evaluate` nor
`imp.analysis`. Nothing here branches on a dataset's name.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh
from tqdm import tqdm

from imp import paths
from imp.config import schema
from imp.data import TaskIterators
from imp.model import Request
from imp.parallel.mesh import put_batch
from imp.parallel.rules import under_rules
from imp.paths import Path  # local, gs:// or s3:// (etils.epath)
from imp.plan import programs as plan_programs
from imp.plan.plan import ConfigError, Plan, TrainProgram
from imp.plan.step_cache import signature, xla_compiles
from imp.run.infer import Infer, infer_fn
from imp.run.restore import Run, compilation_cache, open_run, restore, task_iterators
from imp.step.state import TrainState
from imp.train import lease
from imp.train.lease import WorkdirBusyError
from imp.train.preemption import EvaluationAbandoned, Preemption
from imp.train.profile_window import ProfileWindow
from imp.train.throughput import Throughput
from imp.train.train_log import CONSOLE_WIDTH, NonFiniteError, OnMetrics, TrainLog, say, wrap

log = logging.getLogger("imp")

__all__ = ["ConfigError", "Hooks", "NonFiniteError", "WorkdirBusyError", "compilation_cache",
           "train"]


@dataclasses.dataclass
class Hooks:
  """What a run does besides training, passed in by the caller.

  Attributes:
    evaluate: infer -> flat results, at eval_every, at the end, and on a finished rerun.
    eval_programs: () -> (Request, example batch) of every program `evaluate` runs, compiled
      before step 1 with the train programs.
    metric_names: the results `evaluate` returns (config.checkpoint_best_metric is one).
    on_metrics: sees every metrics write's per-task means.
    on_close: (workdir) at the end of the run, on process 0 (writes plots).
    eval_seconds: () -> wall seconds of each eval entry's latest evaluation (summary.json).
  """

  evaluate: Callable[[Infer], dict[str, float]] | None = None
  eval_programs: Callable[[], Sequence[tuple[Request, Mapping[str, Any]]]] = lambda: ()
  metric_names: tuple[str, ...] = ()
  on_metrics: OnMetrics | None = None
  on_close: Callable[[Path], None] | None = None
  eval_seconds: Callable[[], dict[str, float]] = dict


def check_best_metric(config: ml_collections.ConfigDict, hooks: Hooks) -> None:
  best = config.get("checkpoint_best_metric")
  if best and best not in hooks.metric_names:
    raise ConfigError(f"config.checkpoint_best_metric={best!r} is not an eval result; "
                      f"valid: {', '.join(hooks.metric_names) or '(no evals configured)'}.")


def xla_log_path(workdir: Path) -> Path | None:
  """Where XLA's compile-time C++ lines go: <workdir>/xla_compile.log (one file per process);
  None (left on the console) for a workdir in a bucket, which fd 2 cannot point at."""
  if paths.is_url(workdir):
    return None
  index = jax.process_index()
  return Path(workdir) / ("xla_compile.log" if index == 0 else f"xla_compile.{index}.log")


def compile_programs(run: Run, hooks: Hooks, *, workers: int = 4,
                     ) -> list[plan_programs.ProgramReport]:
  """Compiles every train and eval program into the run's cache; prints the table, writes
  <workdir>/programs.json and stops (ProgramMemoryError) if one does not fit a device."""
  try:  # the eval suite builds its batches here: a bad eval setting fails before step 1
    evals = hooks.eval_programs()
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e
  specs = plan_programs.train_specs(run.plan) + plan_programs.eval_specs(
      run.plan, run.state.params, evals)
  start = time.perf_counter()
  reports = plan_programs.compile_all(run.plan, run.cache, specs, workers=workers,
                                      xla_log_path=xla_log_path(run.workdir))
  wall = time.perf_counter() - start
  choices = plan_programs.model_choices(run.plan)
  log.info("compiled before step 1:\n%s",
           "\n".join(plan_programs.table_lines(reports, wall_seconds=wall, choices=choices)))
  if jax.process_index() == 0:
    plan_programs.write_json(reports, run.workdir / "programs.json",
                             compile_wall_seconds=round(wall, 2), workers=workers, **choices,
                             device_memory_bytes=plan_programs.device_memory(),
                             device_memory_limit=run.config.get("device_memory_limit"))
  plan_programs.check_memory(reports, run.config.get("device_memory_limit"))
  return reports


def _meta(run: Run, iterators) -> dict[str, Any]:
  return {"sampler": run.sampler.state_dict(), "data": iterators.get_state(),
          "config": json.loads(run.config.to_json_best_effort())}


def train(config: ml_collections.ConfigDict, workdir: str | Path, *,
          hooks: Callable[[Run], Hooks] | None = None,
          stop_after: int | None = None) -> dict[str, Any]:
  """Runs (or resumes) an experiment; returns the summary also written to summary.json.

  Args:
    config: the experiment config.
    workdir: checkpoints, metrics, programs.json and summary go here; an existing checkpoint
      is resumed.
    hooks: run -> Hooks (evaluation, plots); None trains without them.
    stop_after: stop (with a checkpoint) after this many steps of this run, as a preemption
      would; for notebooks and tests.
  """
  # One run per workdir (imp/train/lease.py): a second one is refused before it writes.
  with lease.hold(workdir, take=jax.process_index() == 0), compilation_cache(config, workdir):
    return _train(config, workdir, hooks, stop_after)


def _train(config: ml_collections.ConfigDict, workdir: str | Path,
           make_hooks: Callable[[Run], Hooks] | None, stop_after: int | None) -> dict[str, Any]:
  wall_start = time.perf_counter()

  # ---- Plan: sources -> Plan -> state in its shardings ------------------------------------
  run, hooks = _open(config, workdir, make_hooks)
  plan = run.plan

  # ---- Resume: read and checked before anything compiles (a changed seed or schedule, a
  # changed model stops in seconds, not after the compiles) ---------------------------------
  state, meta = _resume(run)

  # ---- Programs: every train and eval program compiled before step 1 -----------------------
  throughput = _throughput(plan, compile_programs(run, hooks))

  # ---- Input pipelines: one grain iterator per task variant, at the checkpoint's positions --
  iterators = task_iterators(run)
  if meta is not None:
    iterators.set_state(meta["data"])
    log.info("resumed from step %d", int(state.step))

  # ---- Steps ----------------------------------------------------------------------------------
  train_log = TrainLog(run.workdir, hooks.on_metrics, kept=functools.partial(_kept, run))
  profiler = ProfileWindow(config.get("profile"), run.workdir)
  total, tally = int(config.total_steps), _Tally(start=int(state.step))
  end = total if stop_after is None else min(total, tally.start + int(stop_after))
  nonfinite = schema.filled(config.get("nonfinite"), "nonfinite")
  stop_on_nonfinite = nonfinite["policy"] == "stop"
  bar = tqdm(total=total, initial=tally.start, desc="train", unit="step", disable=None,
             dynamic_ncols=True)
  with Preemption() as preemption:
    evaluate = functools.partial(_evaluate, run, hooks, train_log, iterators, preemption, bar)
    for step in range(tally.start, end):
      program = plan.program_at(step)  # the sampled task's AGD step, or the weighted sum
      batches = tally.next_batches(iterators, program, plan.mesh)  # split over devices
      with profiler.step(step) as outputs:  # config.profile's window of steps, else nothing
        state, metrics = _run_step(run, program, state, batches, tally)
        outputs.append(state)
      throughput.step(program.name, metrics)
      tally.add(step, program, metrics, train_log)
      bar.update(1)
      done = step + 1
      # Read once per step: the save and the stop below must agree on it (and every process
      # on the step: imp/train/preemption.py).
      preempted = preemption.reached(done)
      stopping = done == end or preempted
      eval_due = bool(config.eval_every) and done % config.eval_every == 0
      save_due = stopping or run.checkpointer.should_save(done)
      if done % config.log_every == 0 or stopping or save_due or eval_due:
        throughput.pause()  # what follows is not a step's time
      # nonfinite.policy='stop' reads this step's flag (one host sync per step) so the run
      # stops at the step that went bad, not at the next log interval.
      if (done % config.log_every == 0 or stopping or
          (stop_on_nonfinite and train_log.nonfinite_now(len(program.tasks)))):
        _write_log(run, train_log, throughput, done, wall_start, bar)
        train_log.check_nonfinite(nonfinite, run.checkpointer.committed)
      # Checkpoint before evaluating, so a failing evaluation never costs trained steps.
      if save_due:
        run.checkpointer.save(done, state, _meta(run, iterators))
      # A preemption's grace period is short: save and go; the rerun evaluates a final step.
      # A signal during an evaluation abandons it (imp/train/preemption.py).
      if not preempted and (done == total or eval_due):
        try:
          tally.evals = evaluate(done, state)
        except EvaluationAbandoned:
          preempted = True
          if not save_due:
            run.checkpointer.save(done, state, _meta(run, iterators))
      if preempted:
        _say_preempted(run, preemption, done, bar)
        break
    # A run stopped after its final save but before its final evaluation finished (or the
    # command of a finished run is rerun): evaluate the final checkpoint now.
    if tally.start == total:
      with contextlib.suppress(EvaluationAbandoned):  # the next rerun evaluates it again
        tally.evals = evaluate(total, state)
  bar.close()
  profiler.close()
  run.checkpointer.close()
  return _summary(run, hooks, train_log, throughput, tally, total, wall_start)


@dataclasses.dataclass
class _Tally:
  """What this run's steps add up to, for summary.json."""

  start: int  # the step the run started (or resumed) at
  steps: int = 0
  data_wait: float = 0.0  # seconds the loop waited for batches
  compiles: int = 0  # XLA compiles inside steps: 0 when every program compiled before step 1
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  evals: dict[str, float] = dataclasses.field(default_factory=dict)
  loop_start: float = dataclasses.field(default_factory=time.perf_counter)

  def next_batches(self, iterators: TaskIterators, program: TrainProgram, mesh: Mesh,
                   ) -> tuple[dict, ...]:
    """The next batch of each of the program's tasks, put on the mesh (its waiting timed)."""
    t0 = time.perf_counter()
    batches = tuple(iterators.next(name) for name in program.tasks)
    self.data_wait += time.perf_counter() - t0
    return tuple(put_batch(batch, mesh) for batch in batches)

  def add(self, step: int, program: TrainProgram, metrics: tuple[dict, ...],
          train_log: TrainLog) -> None:
    """Step `step` ran `program`: one step more, one more for each of its tasks."""
    self.steps += 1
    for name, task_metrics in zip(program.tasks, metrics, strict=True):
      self.counts[name] += 1
      train_log.add(step, name, task_metrics)


def _write_log(run: Run, train_log: TrainLog, throughput: Throughput, done: int,
               wall_start: float, bar: tqdm) -> None:
  """The log interval's throughput and per-task means: metrics.jsonl, TensorBoard, console."""
  train_log.writer.write(done, throughput.interval_scalars(), kind="throughput")
  say(train_log.write(done, run.cache.stats(time.perf_counter() - wall_start),
                      sum(s.skips.count for s in run.sources.values())), bar.write)


def _kept(run: Run) -> str:
  """After a failed metrics write: the pending save's failure if it failed (the save is what
  fills a disk), else what a rerun resumes from."""
  step, _ = run.checkpointer.committed()  # CheckpointSaveError if the pending save failed
  return f"the newest committed checkpoint, step {step}, is kept."


def _open(config: ml_collections.ConfigDict, workdir: str | Path,
          make_hooks: Callable[[Run], Hooks] | None) -> tuple[Run, Hooks]:
  """The run (plan, sources, state in its shardings) and its hooks, checked."""
  run = open_run(config, workdir)
  try:
    hooks = make_hooks(run) if make_hooks else Hooks()  # validates what the hooks read
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e
  check_best_metric(config, hooks)
  log.info("%s", "\n".join(wrap("tasks (name=weight):",  # below the log's 14-character prefix
                                [f"{t.name}={t.weight:.3f}" for t in run.plan.registry],
                                CONSOLE_WIDTH - 14)))
  return run, hooks


def _resume(run: Run) -> tuple[TrainState, dict[str, Any] | None]:
  """The newest readable checkpoint's state and metadata, its schedule checked against the
  config's; the fresh state and None without one."""
  restored = restore(run)
  if restored is None:
    return run.state, None
  state, meta = restored
  try:
    run.plan.sampler.check_state(meta["sampler"])
  except ValueError as e:
    raise ConfigError(str(e)) from e
  return state, meta


def _throughput(plan: Plan, reports: Sequence[plan_programs.ProgramReport]) -> Throughput:
  """Step-time bookkeeping of the train programs, with their FLOPs and examples per step."""
  rows = {t.name: t.variant.batch_size for t in plan.registry}
  return Throughput(
      {r.name.removeprefix("train "): r.gflops for r in reports if r.kind == "train"},
      {p.name: sum(rows[t] for t in p.tasks) for p in plan.programs},
      jax.devices()[0].device_kind)


def _run_step(run: Run, program: TrainProgram, state: TrainState, batches: tuple[dict, ...],
              tally: _Tally) -> tuple[TrainState, tuple[dict, ...]]:
  """The compiled program (the AGD step of one task, or the weighted sum of all): the new
  state and one metrics dict per task. XLA compiles meanwhile are counted in `tally`
  (every program was compiled before step 1: there should be none)."""
  plan, arg = run.plan, program.arguments(batches)
  compiles_before = xla_compiles()
  compiled = run.cache.compiled(
      program.key, lambda: under_rules(plan.step_fn(program, state, arg), plan.mesh,
                                       plan.rules),
      (state, arg), donate_argnums=(0,), sig=signature(arg),
      in_shardings=plan.in_shardings, out_shardings=plan.out_shardings)
  state, metrics = compiled(state, arg)
  tally.compiles += xla_compiles() - compiles_before
  return state, program.per_task(metrics)


def _say_preempted(run: Run, preemption: Preemption, done: int, bar: tqdm) -> None:
  say(f"step {done}: signal {preemption.signal} received; saved a checkpoint at step "
      f"{done}; rerun the same command to resume.", bar.write)
  say(f"  checkpoints: {run.checkpointer.directory}", bar.write)


def _evaluate(run: Run, hooks: Hooks, train_log: TrainLog, iterators: TaskIterators,
              preemption: Preemption, bar: tqdm, done: int, state: TrainState,
              ) -> dict[str, float]:
  """The hooks' evaluation of `state` after step `done`: logged, and the best checkpoint
  kept by it. A signal meanwhile raises EvaluationAbandoned."""
  if hooks.evaluate is None:
    return {}
  with preemption.abandoning():  # a signal now raises EvaluationAbandoned in here
    evals = hooks.evaluate(infer_fn(run, state.params))
  train_log.writer.write(done, evals, kind="eval")
  run.checkpointer.save_best(done, state, _meta(run, iterators), evals)
  for line in wrap(f"step {done}: eval", [f"{k}={v:.4f}" for k, v in evals.items()]):
    say(line, bar.write)
  return evals


def _summary(run: Run, hooks: Hooks, train_log: TrainLog, throughput: Throughput,
             tally: _Tally, total: int, wall_start: float) -> dict[str, Any]:
  """summary.json (process 0 writes it), after the end-of-run hook; the writers closed."""
  wall = time.perf_counter() - wall_start
  loop_seconds = time.perf_counter() - tally.loop_start
  steps = tally.steps
  summary = {
      "steps": tally.start + steps, "total_steps": total, "steps_this_run": steps,
      "stopped_early": tally.start + steps < total, "wall_seconds": round(wall, 2),
      "steps_per_second": round(steps / loop_seconds, 2) if steps else None,
      "data_wait_share": round(tally.data_wait / loop_seconds, 4) if steps else None,
      # Every program compiled before step 1: any XLA compile inside a step is counted here.
      "step_cache": dict(run.cache.stats(wall), xla_compiles_after_warmup=tally.compiles),
      "task_steps": dict(sorted(tally.counts.items())),
      # Per train program: ms/step, examples/s, TFLOP/s per device, MFU (imp/train/throughput.py)
      "throughput": throughput.summary(),
      "nonfinite_skipped_steps": train_log.skipped,
      # Bad examples the pipelines skipped (datasets.<name>.on_error="skip"), this run.
      "data_skipped_examples": {n: s.skips.count for n, s in run.sources.items()
                                if s.skips.count},
      "eval": tally.evals,
      "eval_seconds": hooks.eval_seconds(),  # per eval entry, its latest evaluation
  }
  train_log.writer.write(tally.start + steps,  # the last step run, also when stopped early
                         {"compile_share": summary["step_cache"]["compile_share"],
                          "data_wait_share": summary["data_wait_share"] or 0.0}, kind="summary")
  if hooks.on_close is not None and jax.process_index() == 0:  # only process 0 writes files
    hooks.on_close(run.workdir)
  train_log.writer.close()
  if jax.process_index() == 0:
    paths.write_text(run.workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
  return summary

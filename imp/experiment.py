"""An experiment end to end: training with the default end-of-run hooks, and evaluation.

The layer above `imp.train`, `imp.evaluate` and `imp.analysis` (beside `imp.main`): it passes
the eval suite and the expert-usage heatmap into the AGD loop as hooks, so the loop imports
neither.

  from imp import experiment
  summary = experiment.train(config, workdir)      # train (or resume), evaluate, plot
  results = experiment.evaluate(config, workdir)   # the eval suite on the latest checkpoint
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from imp import paths
from imp.analysis import plots
from imp.analysis.expert_usage import ExpertUsage, plot_expert_usage
from imp.evaluate import EvalSuite
from imp.paths import Path  # local, gs:// or s3:// (etils.epath)
from imp.plan.plan import ConfigError
from imp.run.infer import eval_rows, infer_fn
from imp.run.metric_writers import MetricWriteError
from imp.run.restore import Run, compilation_cache, open_run, restore_latest, task_iterators
from imp.step.checkpoint import CheckpointSaveError
from imp.train import loop
from imp.train.lease import WorkdirBusyError
from imp.train.train_log import CONSOLE_WIDTH, NonFiniteError, wrap

log = logging.getLogger("imp")

__all__ = ["CheckpointSaveError", "ConfigError", "EvalSuite", "MetricWriteError",
           "NonFiniteError", "WorkdirBusyError", "build", "compilation_cache", "default_hooks",
           "evaluate", "evaluate_params", "markdown_table", "task_iterators", "train"]

def default_hooks(run: Run) -> loop.Hooks:
  """The eval suite of config.evals; at the end, the run's plots (loss per task, eval results
  over steps, steps per task; the expert-usage heatmap of an MoE run)."""
  suite = EvalSuite(run.config.evals, run.sources, rows=eval_rows(run))
  usage = ExpertUsage()  # MoE router probabilities per task/modality

  def on_metrics(task: str, means: dict, steps: int) -> None:
    for name, value in means.items():
      if name.endswith("/router_prob"):  # moe/<modality>/router_prob: [layers, experts]
        usage.add(f"{task} {name.split('/')[1]}", value, count=steps)

  def on_close(workdir: Path) -> None:
    names = [t.name for t in run.registry]
    try:  # a plot that fails must not cost the run its summary: say so and go on
      schedule = run.sampler.task_index if run.plan.schedule == "agd" else None
      drawn = plots.write_run_plots(workdir, names, schedule)
      if usage:
        drawn["moe_expert_usage"] = plot_expert_usage(
            usage.means(), workdir / "moe_expert_usage.png", label="mean router probability")
    except (OSError, ValueError, RuntimeError) as e:
      log.warning("plots not written: %s: %s", type(e).__name__, e)
      return
    # Relative names (the workdir heads the summary), wrapped below the log's 14-character
    # prefix: console lines stay short.
    log.info("%s", "\n".join(wrap("plots in the workdir:", [
        str(p.relative_to(workdir)) for p in drawn.values()], CONSOLE_WIDTH - 14)))

  return loop.Hooks(evaluate=suite.run, eval_programs=suite.programs,
                    metric_names=suite.metric_names, on_metrics=on_metrics, on_close=on_close,
                    eval_seconds=lambda: dict(suite.seconds))



def build(config: ml_collections.ConfigDict, workdir: str | Path) -> Run:
  """The run of a config without training (plan, sources, state), its evals validated too.

  Raises:
    ConfigError: naming the bad key, file or task and what would be valid.
  """
  run = open_run(config, workdir)
  try:
    loop.check_best_metric(config, default_hooks(run))
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e
  return run


def train(config: ml_collections.ConfigDict, workdir: str | Path, *,
          stop_after: int | None = None) -> dict[str, Any]:
  """`imp.train.loop.train` with the default hooks (see there)."""
  return loop.train(config, workdir, hooks=default_hooks, stop_after=stop_after)


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
  """Runs the eval suite on the latest checkpoint in `workdir`; process 0 writes
  <workdir>/evaluation.json ({"step", "results"}) and evaluation.md (a Markdown table)."""
  with compilation_cache(config, workdir):
    run, state = restore_latest(config, workdir)
    try:
      results = evaluate_params(run, state.params)
    finally:
      run.checkpointer.close()
  if jax.process_index() == 0:
    step = int(state.step)
    paths.write_text(run.workdir / "evaluation.json",
                     json.dumps({"step": step, "results": results}, indent=2) + "\n")
    paths.write_text(run.workdir / "evaluation.md", markdown_table(results, step))
  return results


def evaluate_params(run: Run, params: Any) -> dict[str, float]:
  """The eval suite of `run.config.evals` on `params` (`run.state.params`: the untrained model,
  the baseline every accuracy bar in the tests is checked against)."""
  return EvalSuite(run.config.evals, run.sources, rows=eval_rows(run)).run(infer_fn(run, params))


def markdown_table(results: Mapping[str, float], step: int) -> str:
  """One row per result: entry, metric, value (accuracies and recalls in percent)."""
  lines = [f"Evaluation of the checkpoint at step {step}.", "",
           "| entry | metric | value (%) |", "| --- | --- | --- |"]
  for name, value in results.items():
    entry, _, metric = name.partition("/")
    lines.append(f"| {entry} | {metric} | {100 * value:.2f} |")
  return "\n".join(lines) + "\n"

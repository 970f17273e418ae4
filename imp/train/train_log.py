"""The training log: step metrics buffered on the device, per-task means written every
`log_every` steps, the NaN/Inf guard's skips counted and config.nonfinite applied.

The console gets short lines (at most CONSOLE_WIDTH characters) that a person can follow;
every metric is in metrics.jsonl and TensorBoard. Each line is flushed when it is written,
so a redirected stdout or a pipe (`> log`, `| tee log`) shows it at once.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from imp.paths import Path  # local, gs:// or s3:// (etils.epath)
from imp.run.metric_writers import MetricWriter

# (task name, metric name -> mean since the last write, steps of that task since then)
OnMetrics = Callable[[str, Mapping[str, np.ndarray], int], None]


CONSOLE_WIDTH = 120


def say(line: str, write: Callable[[str], None] | None = None) -> None:
  """Prints `line` (through `write`, e.g. a progress bar's, which keeps the bar below it)
  and flushes: stdout is block-buffered when it is not a terminal."""
  (write or print)(line)
  sys.stdout.flush()


def fit(head: str, items: Sequence[str], tail: str = "", width: int = CONSOLE_WIDTH) -> str:
  """`head item item ... tail` in at most `width` characters: the tail goes first, then the
  items that do not fit become "+k more" (they are in metrics.jsonl)."""
  if len(line := " ".join([head, *items, tail]).rstrip()) <= width:
    return line
  shown = list(items)
  while shown:
    more = f"+{len(items) - len(shown)} more" if len(shown) < len(items) else ""
    if len(line := " ".join(x for x in [head, *shown, more] if x)) <= width:
      return line
    shown.pop()
  return f"{head} +{len(items)} more"[:width]


def wrap(head: str, items: Sequence[str], width: int = CONSOLE_WIDTH) -> list[str]:
  """`head item item ...` over as many lines of at most `width` characters as it takes
  (continuation lines indented); for what must all be seen, like eval results."""
  lines, line = [], head
  for item in items:
    if len(line) + 1 + len(item) > width and line.strip():
      lines.append(line)
      line = "  " + item
    else:
      line = f"{line} {item}" if line else item
  return [*lines, line]


class NonFiniteError(RuntimeError):
  """Training stopped on a non-finite loss or gradient (config.nonfinite)."""


def mean_by_task(pending: list[tuple[str, dict]]) -> dict[str, dict[str, np.ndarray]]:
  """task -> metric -> mean over the steps since the last write (arrays keep their shape)."""
  values = jax.device_get([m for _, m in pending])
  collected: dict[str, dict[str, list]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for (task, _), metrics in zip(pending, values, strict=True):
    for name, value in metrics.items():
      collected[task][name].append(np.asarray(value))
  return {task: {name: np.mean(v, axis=0) for name, v in metrics.items()}
          for task, metrics in collected.items()}


def flatten(means: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
  """Scalars for the writers: per-layer MoE metrics become ".../l<layer>[/e<expert>]"."""
  flat = {}
  for task, metrics in means.items():
    for name, value in metrics.items():
      for index in np.ndindex(value.shape):
        suffix = "".join(f"/{p}{i}" for p, i in zip("le", index, strict=False))
        flat[f"{task}/{name}{suffix}"] = float(value[index])
  return flat


def _skip_line(skips: list[tuple[int, str]], shown: int = 3) -> str:
  """A second console line for the steps the NaN/Inf guard skipped since the last write
  (so at most one per log interval), listing the first `shown`, within the console width."""
  if not skips:
    return ""
  listed = ", ".join(f"{step} ({task})" for step, task in skips[:shown])
  more = f" and {len(skips) - shown} more" if len(skips) > shown else ""
  line = f"  NaN/Inf guard (config.nonfinite) skipped {len(skips)} step(s): {listed}{more}"
  return "\n" + (line if len(line) <= CONSOLE_WIDTH else line[:CONSOLE_WIDTH - 3] + "...")


class TrainLog:
  """Buffers step metrics on the device and writes per-task means every `log_every` steps.

  Metrics stay device arrays until a write, so logging forces no host sync per step.
  `on_metrics` (an end-of-run hook's collector, e.g. expert usage) sees every write's means.
  """

  def __init__(self, workdir: Path, on_metrics: OnMetrics | None = None,
               kept: Callable[[], str] | None = None):
    # kept: MetricWriter's, run first when a write fails
    self.writer = MetricWriter(workdir, enabled=jax.process_index() == 0, kept=kept)
    self.on_metrics = on_metrics
    self.pending: list[tuple[str, dict]] = []
    self.steps: list[int] = []
    self.skipped = 0  # steps whose update the NaN/Inf guard skipped
    self.consecutive = 0
    self.first_skip: tuple[int, str] | None = None  # (step, task) of the latest skip run

  def add(self, step: int, task_name: str, metrics: dict) -> None:
    self.steps.append(step)
    self.pending.append((task_name, metrics))

  def nonfinite_now(self, last: int) -> bool:
    """True if one of the `last` metrics added (this step's tasks) flags a skipped update."""
    return any(bool(f) for f in jax.device_get([m["nonfinite"] for _, m in self.pending[-last:]]))

  def _count_skips(self) -> list[tuple[int, str]]:
    """Counts the buffered steps the guard skipped; returns their (step, task)."""
    flags = jax.device_get([m["nonfinite"] for _, m in self.pending])
    previous, skips = None, []
    for step, (task_name, _), flag in zip(self.steps, self.pending, flags, strict=True):
      if step == previous:  # a weighted-sum step logs every task: count the step once
        continue
      previous = step
      if flag:
        skips.append((step, task_name))
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive == 1:
          self.first_skip = (step, task_name)
      else:
        self.consecutive = 0
    return skips

  def write(self, step: int, cache_stats: dict[str, float], data_skipped: int = 0) -> str:
    """Writes the buffered means (and the count of skipped bad examples); returns the line."""
    skips = self._count_skips()
    means = mean_by_task(self.pending)
    if self.on_metrics is not None:
      for task_name, metrics in means.items():
        self.on_metrics(task_name, metrics, sum(t == task_name for t, _ in self.pending))
    self.pending.clear()
    self.steps.clear()
    scalars = flatten(means)
    self.writer.write(step, dict(scalars, **{f"step_cache/{k}": v
                                             for k, v in cache_stats.items()},
                                 **{"data/skipped_examples": data_skipped}))
    losses = [f"{k[:-len('/loss')]}={v:.3f}" for k, v in sorted(scalars.items())
              if k.endswith("/loss") and "/moe/" not in k]
    skipped = f" ({data_skipped} bad examples skipped)" if data_skipped else ""
    return fit(f"step {step}{skipped}: loss", losses,
               f"| {100 * cache_stats['compile_share']:.1f}% of wall compiling") + _skip_line(skips)

  def check_nonfinite(self, settings: Mapping,
                      checkpoint: Callable[[], tuple[int | None, Path]]) -> None:
    """Applies config.nonfinite (its settings filled in: `schema.filled`) after a write;
    `checkpoint()` is (newest committed step, directory), asked only when stopping (it waits
    for a pending save)."""
    policy, limit = settings["policy"], int(settings["max_consecutive"])
    if policy == "stop" and self.skipped:
      why = "config.nonfinite.policy='stop'"
    elif self.consecutive > limit:
      why = (f"{self.consecutive} consecutive skipped steps > "
             f"config.nonfinite.max_consecutive={limit}")
    else:
      return
    step, task = self.first_skip
    checkpoint = checkpoint()
    raise NonFiniteError(
        f"non-finite loss or gradient in task {task!r} at step {step} ({why}). The guard kept "
        "the parameters of those steps unchanged; "
        + (f"the newest checkpoint is step {checkpoint[0]} in {checkpoint[1]}."
           if checkpoint[0] is not None else f"no checkpoint in {checkpoint[1]} yet."))

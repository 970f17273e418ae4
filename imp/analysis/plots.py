"""Run plots (matplotlib PNG): per-task loss curves, eval metrics over steps, task sampling
counts, task matrices.

Every training run writes them at its end (`imp.experiment`'s end-of-run hook calls
`write_run_plots`); this command redraws them, and adds them to TensorBoard:

  python -m imp.analysis.plots --config experiments/digits.py --workdir /tmp/digits

writes `<workdir>/analysis/loss_curves.png` (from metrics.jsonl), `eval_metrics.png` (every
eval result over steps, from metrics.jsonl), `task_counts.png` (the seeded task schedule: the
task of step t is a pure function of the seed and t, so the counts are recomputed exactly
rather than logged); MoE runs also leave the expert-usage heatmap `<workdir>/
moe_expert_usage.png` (`imp.analysis.expert_usage`). The images also go to TensorBoard
(`<workdir>/tensorboard`, tag `analysis/<name>`). Interference and affinity matrices come from
`python -m imp.analysis.interference`, which calls `plot_task_matrix`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from imp import paths
from imp.paths import Path
from imp.run import metric_writers


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def read_metrics(workdir: paths.PathLike, kind: str = "train") -> list[dict]:
  """The records of one kind in a run's metrics (metrics.jsonl, or its segments in a bucket)."""
  records = metric_writers.read_metrics(workdir)
  if not records:
    raise FileNotFoundError(f"no metrics in {workdir}; train into this workdir first.")
  return [r for r in records if r.get("kind") == kind]


def loss_curves(records: Sequence[Mapping]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """task -> (steps [n], loss [n]) from train records' "<task>/loss" entries."""
  curves: dict[str, list[tuple[int, float]]] = {}
  for r in records:
    for key, value in r.items():
      if key.endswith("/loss") and not key.startswith("moe/") and isinstance(value, float):
        curves.setdefault(key[: -len("/loss")], []).append((int(r["step"]), value))
  return {t: (np.array([s for s, _ in v]), np.array([x for _, x in v]))
          for t, v in sorted(curves.items())}


def eval_curves(records: Sequence[Mapping]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """result name -> (steps [n], value [n]) from eval records ("<entry>/<metric>")."""
  curves: dict[str, list[tuple[int, float]]] = {}
  for r in records:
    for key, value in r.items():
      if key not in ("step", "kind") and isinstance(value, int | float):
        curves.setdefault(key, []).append((int(r["step"]), float(value)))
  return {k: (np.array([s for s, _ in v]), np.array([x for _, x in v]))
          for k, v in sorted(curves.items())}


def cumulative_counts(schedule: npt.ArrayLike, num_tasks: int) -> np.ndarray:
  """[steps, tasks]: how often each task was sampled up to and including each step."""
  s = np.asarray(schedule)
  return np.cumsum(np.eye(num_tasks, dtype=np.int64)[s], axis=0)


def save_figure(fig, path: paths.PathLike) -> paths.Path:
  """The figure as a PNG at `path` (a local file or an object in a bucket), whole or absent."""
  path = paths.as_path(path, key="output")
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
  _pyplot().close(fig)
  paths.write_bytes(path, png.getvalue())
  return path


def plot_loss_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path) -> Path:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  for task, (steps, loss) in curves.items():
    ax.plot(steps, loss, label=task)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (mean over the log interval)")
  ax.set_title("Training loss per task")
  if curves:  # a run whose log has no loss yet still gets its (empty, titled) plot
    ax.legend(fontsize=7)
  return save_figure(fig, path)


def plot_eval_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path) -> Path:
  """Every eval result (accuracies, recalls: fractions in [0, 1]) over the steps it was
  measured at; markers, since a run may evaluate only at its end."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  for name, (steps, values) in curves.items():
    ax.plot(steps, 100 * values, marker="o", label=f"{name} ({100 * values[-1]:.1f}%)")
  ax.set_xlabel("step")
  ax.set_ylabel("held-out result (%)")
  ax.set_title("Evaluation results over training")
  if curves:
    ax.legend(fontsize=7)
  return save_figure(fig, path)


def plot_task_counts(counts: np.ndarray, names: Sequence[str], path) -> Path:
  """Cumulative steps per task [steps, tasks] as lines."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  for k, name in enumerate(names):
    ax.plot(np.arange(1, len(counts) + 1), counts[:, k], label=f"{name} ({counts[-1, k]})")
  ax.set_xlabel("step")
  ax.set_ylabel("times sampled")
  ax.set_title("Steps per task (AGD schedule)")
  ax.legend(fontsize=7)
  return save_figure(fig, path)


def write_run_plots(workdir: str | Path, names: Sequence[str],
                    task_of_step: Callable[[int], int] | None) -> dict[str, Path]:
  """The plots of a run from its metrics.jsonl: `<workdir>/analysis/{loss_curves,
  eval_metrics,task_counts}.png`. `task_of_step` is the run's seeded AGD schedule (its counts
  cover the steps the log reached); None (weighted-sum steps train every task) draws no
  counts."""
  workdir = paths.as_path(workdir)
  out = workdir / "analysis"
  train = read_metrics(workdir)
  evals = read_metrics(workdir, kind="eval")
  steps = max((int(r["step"]) for r in train), default=0)
  drawn = {"loss_curves": plot_loss_curves(loss_curves(train), out / "loss_curves.png"),
           "eval_metrics": plot_eval_curves(eval_curves(evals), out / "eval_metrics.png")}
  if task_of_step is not None and steps:
    schedule = [task_of_step(t) for t in range(steps)]
    drawn["task_counts"] = plot_task_counts(cumulative_counts(schedule, len(names)), names,
                                            out / "task_counts.png")
  return drawn


def plot_task_matrix(matrix: npt.ArrayLike, tasks: Sequence[str], path, title: str) -> Path:
  """A [T, T] heatmap (rows: affected task i, columns: stepping task j), values printed."""
  plt = _pyplot()
  m = np.asarray(matrix, np.float64)
  fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(tasks), 1.0 + 0.8 * len(tasks)))
  bound = float(np.abs(m).max()) or 1.0
  image = ax.imshow(m, cmap="RdYlGn", vmin=-bound, vmax=bound)
  for (i, j), v in np.ndenumerate(m):
    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
  ax.set_xticks(range(len(tasks)), tasks, rotation=60, ha="right", fontsize=7)
  ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax)
  return save_figure(fig, path)


def add_to_tensorboard(workdir: str | Path, images: Mapping[str, Path], step: int) -> None:
  """PNG files as TensorBoard images under `analysis/<name>`."""
  plt = _pyplot()
  writer = metric_writers.summary_writer(paths.as_path(workdir, key="--workdir") / "tensorboard")
  for name, path in images.items():
    with paths.as_path(path).open("rb") as f:
      pixels = plt.imread(f, format="png")[..., :3]  # [H, W, 3] floats in [0, 1]
    writer.add_image(f"analysis/{name}", pixels, step, dataformats="HWC")
  writer.close()


def main(argv: Sequence[str] | None = None) -> None:
  import argparse

  from imp.analysis import ablations
  from imp.data import load_sources
  from imp.plan.plan import build_plan, facts_of_sources

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="experiment config file[:arg]")
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args(argv)
  config = ablations.config_from_file(args.config)
  workdir = paths.command_line_path(args.workdir, key="--workdir")
  summary = json.loads((workdir / "summary.json").read_text())
  # The registry and the seeded sampler of this run.
  plan = build_plan(config, facts_of_sources(load_sources(config.datasets)))
  images = write_run_plots(workdir, [t.name for t in plan.registry], plan.sampler.task_index)
  add_to_tensorboard(workdir, images, int(summary["steps"]))
  print("wrote " + ", ".join(str(p) for p in images.values()))


if __name__ == "__main__":
  main()

"""Run plots (matplotlib PNG): per-task loss curves, task sampling counts, task matrices.

  python -m imp.analysis.plots --config experiments/digits.py --workdir /tmp/digits

writes `<workdir>/analysis/loss_curves.png` (from metrics.jsonl), `task_counts.png` (the
seeded task schedule: the task of step t is a pure function of the seed and t, so the counts
are recomputed exactly rather than logged) and, for MoE runs, the expert-usage heatmap
(`imp.analysis.expert_usage`). The images also go to TensorBoard (`<workdir>/tensorboard`,
tag `analysis/<name>`). Interference and affinity matrices come from
`python -m imp.analysis.interference`, which calls `plot_task_matrix`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from imp import paths
from imp.paths import Path
from imp.train import metric_writers


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
  ax.legend(fontsize=7)
  return save_figure(fig, path)


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
  out = workdir / "analysis"
  records = read_metrics(workdir)
  images = {"loss_curves": plot_loss_curves(loss_curves(records), out / "loss_curves.png")}
  summary = json.loads((workdir / "summary.json").read_text())
  # The registry and the seeded sampler of this run.
  plan = build_plan(config, facts_of_sources(load_sources(config.datasets)))
  schedule = [plan.sampler.task_index(t) for t in range(int(summary["steps"]))]
  names = [t.name for t in plan.registry]
  images["task_counts"] = plot_task_counts(cumulative_counts(schedule, len(names)), names,
                                           out / "task_counts.png")
  add_to_tensorboard(workdir, images, int(summary["steps"]))
  print("wrote " + ", ".join(str(p) for p in images.values()))


if __name__ == "__main__":
  main()

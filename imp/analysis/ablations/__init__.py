r"""The papers' ablations at small scale: run every (variant, seed) of a study, tabulate mean ± std.

A study is an `experiments/ablation_<study>.py` config whose `get_config("<variant>[,short]")`
selects one arm. Every run is an ordinary `imp.experiment.train` into its own workdir
(`<root>/<study>/<variant>/seed<k>`); a finished run (its `summary.json` exists) is read, not
rerun, so an interrupted sweep continues where it stopped.

  python -m imp.analysis.ablations --study objectives --root /tmp/ablations
  python -m imp.analysis.ablations --study all --short      # 12 steps per run, one seed
  python -m imp.analysis.ablations --study objectives --budget long --root /tmp/abl_long

The notebook `experiments/notebooks/ablations.ipynb` calls the same functions; the command
line is `__main__.py` beside this file, which passes `imp.experiment.train` in (analysis sits
below the experiment and never imports it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imp import paths
from imp.analysis import interference
from imp.config.files import from_file as config_from_file  # noqa: F401  (callers use this name)

REPO = Path(__file__).resolve().parents[3]
# study -> (variants in table order, result columns: (eval result name, header)).
STUDIES: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "objectives": (("softmax", "nce", "sum", "agd"),
                   (("digits/linear_probe_top1", "linear probe top-1"),
                    ("digits/zero_shot_top1", "zero-shot top-1"))),
    "resolution": (("single", "mixture"),
                   (("digits/zero_shot_top1", "zero-shot @8x8"),
                    ("digits_16/zero_shot_top1", "zero-shot @16x16"),
                    ("digits/linear_probe_top1", "probe @8x8"),
                    ("digits_16/linear_probe_top1", "probe @16x16"))),
    "moe": (("dense", "moe4", "moe16"),
            (("digits/linear_probe_top1", "linear probe top-1"),
             ("digits/zero_shot_top1", "zero-shot top-1"))),
    # Issue 37: audio, images and their AGD mix (experiments/ablation_modality_mix.py); a
    # modality an arm does not train shows "-". Needs the av_digits folders (espeak-ng).
    "modality_mix": (("audio", "image", "mix", "mix_moe", "mix_modality", "mix_x3",
                      "mix_moe_x3", "mix_modality_x3"),
                     (("spoken/classifier_top1", "audio classifier"),
                      ("spoken/linear_probe_top1", "audio probe"),
                      ("images/classifier_top1", "image classifier"),
                      ("images/linear_probe_top1", "image probe"),
                      ("av/retrieval/audio_to_image/R@1", "audio -> image R@1"))),
    # Last, so that "all" runs the digits studies first: it reads Debian's Fashion-MNIST.
    "objectives_fashion": (("softmax", "nce", "sum", "agd"),
                           (("fashion/linear_probe_top1", "linear probe top-1"),
                            ("fashion/zero_shot_top1", "zero-shot top-1"))),
}

# study -> (header, task entries): a column of each arm's training steps per entry (mean over
# seeds), for the studies whose arms differ in what they train.
ENTRY_STEPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "modality_mix": ("steps: audio / image / a-i NCE", ("spoken_cls", "images_cls", "av_nce")),
}

# study -> (task variants compared, columns: (header, matrix, row task, column task)), for the
# arms that train several of them: imp.analysis.interference on the whole encoder at each
# run's last checkpoint. I(row ← column), Uni-Perceiver-MoE eq. 1-2: what a step on the column
# task does to the row task's loss (1: lowers it as much as the row task's own step would;
# 0: leaves it; < 0: raises it). M3SAT's affinity is left out: one SGD step at the Adam
# learning rate moves these losses by about 1e-6, below what the table can show.
INTERFERENCE: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str, str, str], ...]]] = {
    "modality_mix": (("spoken_cls/base", "images_cls/base", "av_nce/base"),
                     (("I(audio ← image)", "interference", "spoken_cls/base", "images_cls/base"),
                      ("I(image ← audio)", "interference", "images_cls/base", "spoken_cls/base"),
                      ("I(audio ← a-i NCE)", "interference", "spoken_cls/base", "av_nce/base"),
                      ("I(image ← a-i NCE)", "interference", "images_cls/base", "av_nce/base"))),
}
INTERFERENCE_FILE = "analysis/study_interference.json"
INTERFERENCE_BATCHES = 8


def load_config(study: str, arg: str):
  """`get_config(arg)` of experiments/ablation_<study>.py."""
  if study not in STUDIES:
    raise ValueError(f"unknown study {study!r}; valid: {', '.join(STUDIES)}.")
  return config_from_file(f"{REPO / 'experiments' / f'ablation_{study}.py'}:{arg}")


def run_study(study: str, root: str | Path, seeds: Sequence[int] = (0, 1, 2),
              short: bool = False, budget: str = "", *,
              train: Callable[..., dict[str, Any]] | None = None,
              ) -> dict[str, list[dict[str, Any]]]:
  """Trains (or reads) every variant x seed; returns variant -> [summary per seed].

  budget: "" (the study's steps), "short" or "long" (imp.config.ablation.BUDGETS);
  `short=True` is budget="short". Runs of different budgets need different roots.
  train: (config, workdir) -> summary, e.g. `imp.experiment.train` (passed in: analysis
  does not import the training loop).
  """
  budget = "short" if short else budget
  if train is None:
    raise TypeError("run_study needs train=, e.g. imp.experiment.train.")

  variants, _ = STUDIES[study]
  out: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
  for seed in seeds:  # seed-major: a sweep cut short still has every variant
    for variant in variants:
      workdir = paths.as_path(root, key="--root") / study / variant / f"seed{seed}"
      done = workdir / "summary.json"
      if not done.exists() or json.loads(done.read_text()).get("stopped_early"):
        config = load_config(study, variant + (f",{budget}" if budget else ""))
        config.seed = int(seed)
        start = time.perf_counter()
        summary = train(config, workdir)
        print(f"{study}/{variant}/seed{seed}: {time.perf_counter() - start:.0f}s "
              f"{json.dumps(summary['eval'])}", flush=True)
      out[variant].append(json.loads(done.read_text()))
  return out


def finished_runs(study: str, root: str | Path) -> dict[str, list[dict[str, Any]]]:
  """variant -> summaries of the runs of `study` under `root` that finished (trains nothing)."""
  variants, _ = STUDIES[study]
  out = {}
  for variant in variants:
    found = sorted((paths.as_path(root, key="--root") / study / variant).glob("seed*/summary.json"))
    runs = [json.loads(p.read_text()) for p in found]
    runs = [r for r in runs if not r.get("stopped_early")]  # a preempted run has no evals
    if runs:
      out[variant] = runs
  return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
  x = np.asarray(values, np.float64)
  return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def table(study: str, results: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
  """A Markdown table: one row per variant, `mean ± std` in percent over seeds per column
  (sample std; a single seed shows its value alone; "-" where the variant does not measure
  the column)."""
  _, columns = STUDIES[study]
  steps_header, entries = ENTRY_STEPS.get(study, (None, ()))
  headers = ["steps"] + [steps_header] * bool(entries) + [h for _, h in columns]
  lines = ["| variant | seeds | " + " | ".join(headers) + " |",
           "|" + " --- |" * (2 + len(headers))]
  for variant, runs in results.items():
    cells = [str(runs[0]["steps"])]
    if entries:
      cells.append(" / ".join(_entry_steps(runs, entry) for entry in entries))
    for metric, _ in columns:
      if not any(metric in r["eval"] for r in runs):
        cells.append("-")
        continue
      mean, std = mean_std([100 * r["eval"][metric] for r in runs])
      cells.append(f"{mean:.1f} ± {std:.1f}" if len(runs) > 1 else f"{mean:.1f} (1 seed)")
    lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _entry_steps(runs: Sequence[Mapping[str, Any]], entry: str) -> str:
  """Mean over runs of the steps of every variant of task entry `entry`; "-" if it never ran."""
  per_run = [sum(n for name, n in r["task_steps"].items() if name.split("/")[0] == entry)
             for r in runs]
  return f"{np.mean(per_run):.0f}" if any(per_run) else "-"


def run_interference(study: str, root: str | Path, seeds: Sequence[int] = (0, 1, 2),
                     budget: str = "") -> dict[str, list[dict[str, Any]]]:
  """variant -> [interference result per seed] for the finished runs of the arms that train
  every task of INTERFERENCE[study]; a run's result is computed once, into INTERFERENCE_FILE
  in its workdir, and read after that."""
  tasks, _ = INTERFERENCE[study]
  variants, _ = STUDIES[study]
  out: dict[str, list[dict[str, Any]]] = {}
  for variant in variants:
    config = load_config(study, variant + (f",{budget}" if budget else ""))
    if not {t.split("/")[0] for t in tasks} <= set(config.tasks):
      continue  # a single-modality arm: nothing to interfere with
    for seed in seeds:
      workdir = paths.as_path(root, key="--root") / study / variant / f"seed{seed}"
      if not (workdir / "summary.json").exists():
        continue
      saved = workdir / INTERFERENCE_FILE
      if not saved.exists():
        config.seed = int(seed)
        result = interference.analyse(
            config, str(workdir), batches=INTERFERENCE_BATCHES, tasks=tasks, seed=int(seed),
            selections={"encoder": r"encoder/"}, lr=float(config.optimizer.learning_rate))
        paths.write_text(saved, json.dumps(result, indent=2) + "\n")
      out.setdefault(variant, []).append(json.loads(saved.read_text()))
  return out


def interference_table(study: str, results: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
  """A Markdown table of INTERFERENCE[study]'s columns, plus the mean distance of gradient sign
  purity from 1/2 (M3SAT eq. 8: 0 where the tasks' gradients cancel, 1/2 where they agree),
  mean ± std over seeds."""
  _, columns = INTERFERENCE[study]
  headers = [h for h, *_ in columns] + ["sign purity: mean abs(P - 1/2)"]
  lines = ["| variant | seeds | " + " | ".join(headers) + " |",
           "|" + " --- |" * (2 + len(headers))]
  for variant, runs in results.items():
    values = [[] for _ in headers]
    for run in runs:
      encoder = run["selections"]["encoder"]
      index = {t: i for i, t in enumerate(encoder["tasks"])}
      for column, (_, matrix, row, col) in enumerate(columns):
        values[column].append(encoder[matrix][index[row]][index[col]])
      values[-1].append(encoder["sign_purity_mean_distance_from_half"])
    cells = []
    for v in values:
      mean, std = mean_std(v)
      cells.append(f"{mean:+.3f} ± {std:.3f}" if len(v) > 1 else f"{mean:+.3f} (1 seed)")
    lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)

"""What the ablation experiments share (experiments/ablation_*.py): their small scale, the
budgets a variant name may carry, and the objectives study's arms for a dataset.

Importable, as big_vision's configs/common.py is: an experiment file imports it by name and
reads like a table of its own variants."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from imp.config.variants import parse_arg

STEPS = 200
# Budgets a variant name may carry after a comma: "agd" (200 steps), "agd,short" (12 steps,
# the notebook's CI run), "agd,long" (1,000 steps: is a finding a short-budget effect?).
BUDGETS = {"": STEPS, "short": 12, "long": 1000}


def objective_arms(dataset: str, base: Mapping[str, Any]) -> dict[str, dict[str, dict]]:
  """The objectives study's arms on `dataset` at the variant `base`: softmax CE alone,
  image vs label-text NCE alone, both summed in one step, and both alternating (AGD)."""
  cls = dict(dataset=dataset, objective="softmax", modalities=("image",),
             args=dict(label_smoothing=0.1), variants=dict(base=dict(base)))
  nce = dict(dataset=dataset, objective="nce", modalities=("image", "text"),
             args=dict(positives="same_label"), variants=dict(base=dict(base)))
  summed = dict(dataset=dataset, objective="sum", modalities=("image", "text"),
                args=dict(objectives=("softmax", "nce"), label_smoothing=0.1,
                          positives="same_label"), variants=dict(base=dict(base)))
  return {
      "softmax": {f"{dataset}_cls": cls},
      "nce": {f"{dataset}_label_nce": nce},
      "sum": {f"{dataset}_sum": summed},
      "agd": {f"{dataset}_cls": cls, f"{dataset}_label_nce": nce},
  }


def small(config: ml_collections.ConfigDict, steps: int,
          eval_resolution: int | None = 8) -> ml_collections.ConfigDict:
  """The ablations' shared scale: 2 layers, `steps` steps, one eval at the end, every eval
  entry at `eval_resolution` (None: as the experiment has it)."""
  config.total_steps = steps
  config.log_every = max(steps // 10, 1)
  config.eval_every = 0  # evaluate once, at the end
  config.checkpoint_every = steps
  config.checkpoint_keep = 1
  config.checkpoint_best_metric = None
  config.model.depth = 2
  config.optimizer.warmup_steps = max(steps // 10, 1)
  for entry in config.evals.values() if eval_resolution else ():
    entry.resolution = eval_resolution
  return config


def variant_and_steps(arg: str, variants: Mapping[str, Any], config_file: str,
                      steps: Mapping[str, int] = BUDGETS) -> tuple[str, int]:
  """"<variant>[,<budget>]" -> (variant, steps); ValueError naming the valid values.
  `steps`: budget -> steps, "" the default (a study with its own budgets passes its own)."""
  budgets = tuple(b for b in steps if b)
  try:
    options = parse_arg(arg, config_file, words=(*variants, *budgets),
                        exclusive=(tuple(variants), budgets))
  except ValueError:
    options = {}
  chosen = [v for v in variants if v in options]
  if len(chosen) != 1:
    raise ValueError(f"{config_file}: unknown variant {arg!r}; valid: {', '.join(variants)}, "
                     f"each optionally with one of ',short', ',long'.")
  return chosen[0], steps[next((b for b in budgets if b in options), "")]

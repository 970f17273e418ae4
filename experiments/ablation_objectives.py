r"""Ablation 1 (IMP Table 2 at small scale): which objectives train the digits encoder best.

Same steps, model and data for every variant; only the objectives differ:

  variant   tasks (8x8 digits, batch 64)                      what a step optimises
  softmax   digits_cls                                        10-way softmax CE
  nce       digits_label_nce                                  image vs label-text NCE
  sum       digits_sum (objective "sum")                      softmax + NCE in one step
  agd       digits_cls, digits_label_nce                      one of the two, alternating

  python -m imp.main --config experiments/ablation_objectives.py:agd --config.seed=1
  python -m imp.analysis.ablations --study objectives   # all variants x 3 seeds, the table

Measured by zero-shot top-1 and the linear probe on frozen features (held-out 360 digits).
"""

import ml_collections

from imp.config.digits import get_config as digits_config
from imp.config.variants import parse_arg

STEPS = 200
# Budgets a variant name may carry after a comma: "agd" (200 steps), "agd,short" (12 steps,
# the notebook's CI run), "agd,long" (1,000 steps: is a finding a short-budget effect?).
BUDGETS = {"": STEPS, "short": 12, "long": 1000}
BASE = dict(batch_size=64, resolution=8, text_length=24)
CLS = dict(dataset="digits", objective="softmax", modalities=("image",),
           args=dict(label_smoothing=0.1), variants=dict(base=BASE))
NCE = dict(dataset="digits", objective="nce", modalities=("image", "text"),
           args=dict(positives="same_label"), variants=dict(base=BASE))
SUM = dict(dataset="digits", objective="sum", modalities=("image", "text"),
           args=dict(objectives=("softmax", "nce"), label_smoothing=0.1,
                     positives="same_label"), variants=dict(base=BASE))
VARIANTS = {
    "softmax": {"digits_cls": CLS},
    "nce": {"digits_label_nce": NCE},
    "sum": {"digits_sum": SUM},
    "agd": {"digits_cls": CLS, "digits_label_nce": NCE},
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


def variant_and_steps(arg: str, variants, config_file: str) -> tuple[str, int]:
  """"<variant>[,<budget>]" -> (variant, steps); ValueError naming the valid values."""
  budgets = tuple(b for b in BUDGETS if b)
  try:
    options = parse_arg(arg, config_file, words=(*variants, *budgets),
                        exclusive=(tuple(variants), budgets))
  except ValueError:
    options = {}
  chosen = [v for v in variants if v in options]
  if len(chosen) != 1:
    raise ValueError(f"{config_file}: unknown variant {arg!r}; valid: {', '.join(variants)}, "
                     f"each optionally with one of ',short', ',long'.")
  return chosen[0], BUDGETS[next((b for b in budgets if b in options), "")]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a variant name, optionally with ",short" or ",long" (BUDGETS)."""
  variant, steps = variant_and_steps(arg or "agd", VARIANTS,
                                     "experiments/ablation_objectives.py")
  config = small(digits_config(), steps)
  config.tasks = ml_collections.ConfigDict(VARIANTS[variant])
  return config

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

from imp.configs.digits import get_config as digits_config

STEPS = 200
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


def small(config: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
  """The ablations' shared scale: 2 layers of width 64, `steps` steps, one eval at the end."""
  config.total_steps = steps
  config.log_every = max(steps // 10, 1)
  config.eval_every = 0  # evaluate once, at the end
  config.checkpoint_every = steps
  config.checkpoint_keep = 1
  config.checkpoint_best_metric = None
  config.model.depth = 2
  config.optimizer.warmup_steps = max(steps // 10, 1)
  config.evals.digits.resolution = 8
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a variant name, optionally with ",short" (12 steps, for the notebook's CI run)."""
  variant, _, mode = (arg or "agd").partition(",")
  if variant not in VARIANTS or mode not in ("", "short"):
    raise ValueError(f"experiments/ablation_objectives.py: unknown variant {arg!r}; valid: "
                     f"{', '.join(VARIANTS)}, each optionally with ',short'.")
  config = small(digits_config(), 12 if mode == "short" else STEPS)
  config.tasks = ml_collections.ConfigDict(VARIANTS[variant])
  return config

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

from imp.config.ablation import objective_arms, small, variant_and_steps
from imp.config.digits import get_config as digits_config

BASE = dict(batch_size=64, resolution=8, text_length=24)
VARIANTS = objective_arms("digits", BASE)  # softmax, nce, sum, agd: the table above


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a variant name, optionally with ",short" or ",long" (imp.config.ablation.BUDGETS)."""
  variant, steps = variant_and_steps(arg or "agd", VARIANTS,
                                     "experiments/ablation_objectives.py")
  config = small(digits_config(), steps)
  config.tasks = ml_collections.ConfigDict(VARIANTS[variant])
  return config

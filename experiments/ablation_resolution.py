r"""Ablation 2 (IMP Fig. 3 at small scale): a mixture of resolutions vs one resolution.

Both variants train the default AGD recipe (softmax + label-text NCE) with the same steps and
the same tokens per batch (1,024 image tokens): the single-resolution run sees only 8x8
digits at batch 64; the mixture alternates 8x8 at batch 64 with 16x16 at batch 16. Both are
evaluated at 8x8 and at 16x16.

  variant   variants per task                    tokens per batch
  single    8x8 x 64                             1,024
  mixture   8x8 x 64, 16x16 x 16                 1,024 each

  python -m imp.main --config experiments/ablation_resolution.py:mixture --config.seed=1
  python -m imp.analysis.ablations --study resolution
"""

import ml_collections

from imp.config.ablation import small, variant_and_steps
from imp.config.digits import get_config as digits_config

BASE = dict(batch_size=64, resolution=8, text_length=24)  # 16 tokens x 64
HIRES = dict(batch_size=16, resolution=16, text_length=24)  # 64 tokens x 16
VARIANTS = {"single": dict(base=BASE), "mixture": dict(base=BASE, hires=HIRES)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a variant name, optionally with ",short" or ",long" (imp.config.ablation.BUDGETS)."""
  variant, steps = variant_and_steps(arg or "mixture", VARIANTS,
                                     "experiments/ablation_resolution.py")
  config = small(digits_config(), steps)
  for task in config.tasks.values():
    task.variants = ml_collections.ConfigDict(VARIANTS[variant])
  config.evals.digits_16 = ml_collections.ConfigDict(dict(config.evals.digits, resolution=16))
  return config

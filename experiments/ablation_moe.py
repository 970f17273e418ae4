r"""Ablation 3 (IMP Fig. 4 at small scale): dense vs expert-choice MoE with 4 and 16 experts.

The default AGD recipe (softmax + label-text NCE on 8x8 digits, batch 64) with the same steps;
the MoE variants make the FFN of layer 2 of 2 an expert-choice MoE layer (capacity factor 1.0
in training, 2.0 in evaluation), each expert as wide as the dense FFN, so FLOPs per token match.

  variant   FFN of layer 2
  dense     dense (256 wide)
  moe4      4 experts
  moe16     16 experts

  python -m imp.main --config experiments/ablation_moe.py:moe16 --config.seed=1
  python -m imp.analysis.ablations --study moe
"""

import ml_collections

from imp.config.ablation import small, variant_and_steps
from imp.config.digits import get_config as digits_config

BASE = dict(batch_size=64, resolution=8, text_length=24)
MOE = dict(every=2, router="expert_choice", group_size="example", dispatch="gather",
           router_args=dict(capacity_factor_train=1.0, capacity_factor_eval=2.0))
VARIANTS = {"dense": None, "moe4": dict(MOE, num_experts=4), "moe16": dict(MOE, num_experts=16)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a variant name, optionally with ",short" or ",long" (imp.config.ablation.BUDGETS)."""
  variant, steps = variant_and_steps(arg or "moe4", VARIANTS,
                                     "experiments/ablation_moe.py")
  config = small(digits_config(), steps)
  for task in config.tasks.values():
    task.variants = ml_collections.ConfigDict(dict(base=BASE))
  if VARIANTS[variant]:
    config.model.moe = VARIANTS[variant]
  return config

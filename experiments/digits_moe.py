r"""The default digits experiment with an expert-choice MoE encoder (IMP §3.3, §4.1).

Every second layer's FFN is a 4-expert MoE layer with experts-choose routing at capacity
factor 1.0 in training and 2.0 in evaluation, no routing noise and no auxiliary loss; each
expert has the dense FFN's width, so the FLOPs per token match the dense default.

  python -m imp.main --config experiments/digits_moe.py --workdir /tmp/digits_moe
  python -m imp.main --config experiments/digits_moe.py:smoke
"""

from imp.config.digits import get_config as digits_config


def get_config(arg: str | None = None):
  config = digits_config(arg)
  config.model.moe = dict(
      num_experts=4,
      every=2,  # layers 2 and 4 of 4 are MoE (V-MoE/LIMoE placement)
      router="expert_choice",
      router_args=dict(capacity_factor_train=1.0, capacity_factor_eval=2.0),
      group_size="example",
      dispatch="gather",
  )
  return config

r"""LIMoE's routing fixes on the audio-visual digits: with and without (LIMoE §3.1; V-MoE §4.1).

experiments/av_digits.py (images, spoken digits, image <-> audio NCE; AGD) with every FFN a
token-choice top-1 MoE layer of 8 experts (capacity factor 1.0 in training, 2.0 in eval),
the setting where LIMoE saw one modality collapse onto few experts. Each task keeps only its
base variant (one input signature per task, so the six runs compile 2 x 3 train programs on
the shared 2-core machine; seeds 1 and 2 load them from the shared compilation cache). Arms:

  top1    no auxiliary loss, tokens fill expert slots in token order
  limoe   LIMoE's per-modality local entropy loss (weight 0.01) and thresholded global
          entropy loss (weight 0.01, tau = log 4: stop pushing once a modality spreads over
          about 4 of the 8 experts), with batch-priority routing

  python -m imp.data.spoken_digits --output data/av_digits
  python -m benchmarks.limoe_ablation --data data/av_digits/prepared
  python -m imp.main --config experiments/ablation_limoe.py:limoe --workdir /tmp/limoe
"""

import math

import ml_collections

from imp.config.files import sibling

av_digits_config = sibling("av_digits", __file__).get_config

MOE = dict(num_experts=8, every=1, router="top_k", group_size="example", dispatch="gather")
TOP1 = dict(k=1, capacity_factor_train=1.0, capacity_factor_eval=2.0)
LIMOE = dict(TOP1, batch_priority=True, local_entropy_weight=0.01, global_entropy_weight=0.01,
             global_entropy_threshold=math.log(4))
VARIANTS = {"top1": TOP1, "limoe": LIMOE}
STEPS = 600


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: "top1" (default) or "limoe", optionally ",smoke" (12 steps)."""
  parts = (arg or "top1").split(",")
  variant, extra = parts[0], parts[1:]
  if variant not in VARIANTS or any(e != "smoke" for e in extra):
    raise ValueError(f"experiments/ablation_limoe.py: unknown variant {arg!r}; valid: "
                     f"{', '.join(VARIANTS)}, optionally followed by ',smoke'.")
  config = av_digits_config()
  for task in config.tasks.values():
    task.variants.auto.kinds = ("base",)
  config.model.moe = dict(MOE, router_args=VARIANTS[variant])
  config.total_steps = 12 if "smoke" in extra else STEPS
  config.log_every = 4 if "smoke" in extra else 100
  config.checkpoint_every = config.total_steps
  return config

r"""Issue 37's study: does mixing modalities pay? Spoken digits and digit images, alone and
mixed by AGD, dense and with the papers' MoEs (IMP §3.3, Uni-Perceiver-MoE §3.2).

The audio-visual digits experiment (experiments/av_digits.py: espeak-ng voices held out of
training, digit images, image <-> audio NCE) with its tasks split into arms. N is the steps of
a single-modality run (1,500, av_digits' own; 12 with ",short", 3,000 with ",long"). The mix
samples its three task entries uniformly, so at 3N steps each gets about N: the steps of its
single-modality run.

  variant            tasks                                  steps  encoder
  audio              spoken_cls                             N      dense
  image              images_cls                             N      dense
  mix                images_cls, spoken_cls, av_nce (AGD)   N      dense   (equal compute)
  mix_moe            the same                               N      expert-choice MoE (IMP)
  mix_modality       the same                               N      modality-routed top-2 MoE
                                                                   (Uni-Perceiver-MoE)
  mix_x3, mix_moe_x3, mix_modality_x3                       3N     as above (equal steps
                                                                   per task)

Build the folders once, then run every arm x seed (the table: imp/analysis/ablations):

  python -m imp.data.spoken_digits --output data/av_digits
  python -m imp.analysis.ablations --study modality_mix --root /tmp/modality_mix
  python -m imp.main --config experiments/ablation_modality_mix.py:mix_moe --config.seed=1

Measured by held-out accuracy per modality (the trained classifier and a linear probe on
frozen features: spoken digits in unseen voices, held-out images) and, for the mixes,
audio <-> image retrieval R@1 and the task interference between the three entries' base
variants at the last checkpoint (imp.analysis.interference). The results and the verdict:
docs/ablations.md, section 5.
"""

import ml_collections

from imp.config.ablation import variant_and_steps
from imp.config.files import sibling

av_digits_config = sibling("av_digits", __file__).get_config

STEPS = {"": 1500, "short": 12, "long": 3000}
MIX = ("images_cls", "spoken_cls", "av_nce")
# The MoE arms: every second FFN of the 4-layer encoder an MoE layer of 4 experts as wide as
# the dense FFN, so FLOPs per token match the dense arms.
EXPERT_CHOICE = dict(num_experts=4, every=2, router="expert_choice", group_size="example",
                     dispatch="gather",
                     router_args=dict(capacity_factor_train=1.0, capacity_factor_eval=2.0))
# Routed by the token's modality alone, top-2 (Uni-Perceiver-MoE's data-independent routing;
# its router arguments as experiments/uniperceiver_moe_ti.py's "modality").
MODALITY = dict(num_experts=4, every=2, router="top_k", condition="modality",
                group_size="example", dispatch="gather", router_args=dict(k=2, noise_std=1 / 8))
#            variant: (tasks, steps multiple, model.moe)
VARIANTS = {"audio": (("spoken_cls",), 1, None), "image": (("images_cls",), 1, None)}
for _name, _moe in (("mix", None), ("mix_moe", EXPERT_CHOICE), ("mix_modality", MODALITY)):
  VARIANTS[_name] = (MIX, 1, _moe)
  VARIANTS[f"{_name}_x3"] = (MIX, 3, _moe)
# Evaluation per arm: a modality's accuracy where the arm trains its classifier; retrieval
# where it trains the pair.
IMAGES_EVAL = dict(dataset="images", modality="image", resolution=8, batch_size=180,
                   zero_shot=False, linear_probe=True, classifier=True)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a variant name, optionally with ",short" or ",long"."""
  variant, steps = variant_and_steps(arg or "mix", VARIANTS,
                                     "experiments/ablation_modality_mix.py", STEPS)
  tasks, multiple, moe = VARIANTS[variant]
  steps *= multiple

  config = av_digits_config()
  config.total_steps = steps
  config.log_every = max(steps // 10, 1)
  config.checkpoint_every = steps
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, max(steps // 10, 1))
  config.tasks = ml_collections.ConfigDict({t: config.tasks[t].to_dict() for t in tasks})
  config.sampling = dict(weighting="uniform")
  config.model.depth = 4
  if moe:
    config.model.moe = moe
  evals = {}
  if "spoken_cls" in tasks:
    evals["spoken"] = config.evals.spoken.to_dict()
  if "images_cls" in tasks:
    evals["images"] = dict(IMAGES_EVAL)
  if "av_nce" in tasks:
    evals["av"] = config.evals.av.to_dict()
  config.evals = ml_collections.ConfigDict(evals)
  return config

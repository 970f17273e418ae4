r"""Ablation 1 on harder data: softmax vs NCE vs sum vs AGD on Fashion-MNIST.

On scikit-learn's digits every arm of the objectives study nears the raw-pixel probe, so one
objective alone already saturates the data. The same four arms here train on Debian's
`dataset-fashion-mnist` (60,000 training and 10,000 test images of 28x28: 49 tokens of 4x4
patches; experiments/fashion_mnist.py) at the ablations' shared scale (2 layers of width 96,
batch 64, one evaluation at the end), where at 1,000 steps (`,long`) no arm is near its
ceiling:

  variant   tasks (28x28 Fashion-MNIST, batch 64)            what a step optimises
  softmax   fashion_cls                                       10-way softmax CE
  nce       fashion_label_nce                                 image vs label-text NCE
  sum       fashion_sum (objective "sum")                     softmax + NCE in one step
  agd       fashion_cls, fashion_label_nce                    one of the two, alternating

  python -m imp.analysis.ablations --study objectives_fashion --budget long --root /tmp/abl
  python -m imp.main --config experiments/ablation_objectives_fashion.py:agd,long

Measured by the linear probe on frozen features (fit on the 60,000 training images) and by
zero-shot top-1, both on the 10,000 test images.
"""

import ml_collections

from imp.config.ablation import objective_arms, small, variant_and_steps
from imp.config.files import sibling

fashion_config = sibling("fashion_mnist", __file__).get_config

BASE = dict(batch_size=64, resolution=28, text_length=32)
# The digits study's arms, each task on Fashion-MNIST at its 28x28 variant.
VARIANTS = objective_arms("fashion", BASE)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a variant name, optionally with ",short" or ",long" (imp.config.ablation.BUDGETS)."""
  variant, steps = variant_and_steps(arg or "agd", VARIANTS,
                                     "experiments/ablation_objectives_fashion.py")
  config = small(fashion_config(), steps, eval_resolution=None)
  config.tasks = ml_collections.ConfigDict(VARIANTS[variant])
  # The probe fits on every training image's features; the raw-pixel probe (784 inputs per
  # image) would take minutes per run for a figure that is the same in every run.
  config.evals.fashion.update(linear_probe=True, raw_probe=False)
  return config

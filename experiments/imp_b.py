r"""IMP-B: the paper's dense base model (IMP Table 1: 86M parameters per token).

IMP-MoE-B (experiments/imp_moe_b.py) without experts: the same ViT-B-sized encoder (12
layers, width 768, 12 heads, MLP 3072), patches of 4x16x16, ImageNet-1k from TFDS at the same
three image variants, Adam at 1e-3 with a cosine schedule and no weight decay.

  python -m imp.main --config experiments/imp_b.py --workdir gs://bucket/imp_b \
      --config.datasets.imagenet.data_dir=gs://bucket/tfds
  python -m imp.main --config experiments/imp_b.py --mode=dry_run --cpu_devices=8 \
      --dry_run_batch_divisor=2048
"""

from imp.config.files import sibling

imp_moe_b_config = sibling("imp_moe_b", __file__).get_config


def get_config(arg: str | None = None):
  config = imp_moe_b_config(arg)
  config.model.moe = dict(num_experts=0)  # dense: every FFN is a plain MLP
  return config

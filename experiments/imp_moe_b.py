r"""IMP-MoE-B: the paper's base MoE model (IMP Table 1 and §4.1).

A ViT-B-sized shared encoder (12 layers, width 768, 12 heads, MLP 3072) whose every second FFN
is a 16-expert expert-choice MoE layer (capacity factor 1.0, no noise, no auxiliary loss),
patches of 4x16x16 on images repeated to 4 frames of 256x256, Adam at 1e-3 with a cosine
schedule and no weight decay.

The data here is ImageNet-1k from TFDS (`imagenet2012`, prepared as ArrayRecord in `data_dir`,
images stored as uint8 tensors at 256x256) with classification and label-text NCE at IMP's
three image variants: base, a quarter of the batch at twice the resolution, and DropToken
0.75. The paper's web-scale mix (WebLI, LAION, JFT, HowTo100M, AudioSet, ...) is not public
in TFDS; add those as further `datasets` entries where you have them.

  python -m imp.main --config experiments/imp_moe_b.py --workdir gs://bucket/imp_moe_b \
      --config.datasets.imagenet.data_dir=gs://bucket/tfds
  python -m imp.main --config experiments/imp_moe_b.py --mode=dry_run --cpu_devices=8 \
      --dry_run_batch_divisor=2048

The batch, 65536, is the paper's global base batch (256 TPU v4 chips, 256 examples each);
divide every variant's batch_size for a smaller slice.
"""

import ml_collections
from ml_collections.config_dict import placeholder  # a str field, None until set by a flag

TEMPLATES = ("a photo of a {}.", "a blurry photo of a {}.", "a photo of the large {}.",
             "a photo of the small {}.", "itap of a {}.")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 500_000
  config.log_every = 100
  config.eval_every = 10_000
  config.checkpoint_every = 2_000
  config.checkpoint_keep = 3
  # Resume from this checkpoint step (None: the newest intact one).
  config.restore_step = ml_collections.config_dict.placeholder(int)
  config.nonfinite = dict(policy="skip", max_consecutive=20)

  config.datasets = ml_collections.ConfigDict({
      "imagenet": dict(source="tfds", tfds_name="imagenet2012", data_dir=placeholder(str),
                       splits=dict(train="train", test="validation"),
                       features=dict(image="image", label="label"),
                       label_templates=TEMPLATES),
  })
  batch = 65536  # IMP's base batch; scale by mesh size
  variants = dict(
      base=dict(batch_size=batch, resolution=256, text_length=16),
      hires=dict(batch_size=batch // 4, resolution=512, text_length=16),
      droptoken=dict(batch_size=batch, resolution=256, text_length=16, drop_token=0.75),
  )
  config.tasks = ml_collections.ConfigDict({
      "imagenet_cls": dict(dataset="imagenet", objective="softmax", modalities=("image",),
                           variants=variants),
      "imagenet_label_nce": dict(dataset="imagenet", objective="nce",
                                 modalities=("image", "text"),
                                 args=dict(positives="same_label"), variants=variants),
  })
  config.sampling = dict(weighting="size")

  config.model = dict(
      width=768, depth=12, num_heads=12, mlp_dim=3072, embed_dim=768,
      scan_layers=True, remat_policy="auto", attention_impl="auto",  # per program, per device
      vision_patch=(4, 16, 16), vision_base_grid=(1, 16, 16), vision_channels=3,
      text_max_length=256,
      moe=dict(num_experts=16, every=2, router="expert_choice",
               router_args=dict(capacity_factor_train=1.0, capacity_factor_eval=2.0),
               group_size="example", dispatch="einsum"),
  )
  config.optimizer = dict(name="adam", learning_rate=1e-3, warmup_steps=10_000,
                          schedule="cosine", grad_clip_norm=1.0)
  config.mesh = dict(data=-1)  # e.g. --config.mesh.expert=16 to split the experts
  config.mesh_rules = "fsdp"  # imp/parallel/rules.py
  config.input = dict(num_threads=16, prefetch=4)
  config.evals = ml_collections.ConfigDict({
      "imagenet": dict(dataset="imagenet", modality="image", resolution=512, text_length=16,
                       train_split="train", test_split="test", batch_size=1024,
                       zero_shot=True, linear_probe=False, templates=TEMPLATES),
  })
  # What the dry run (--mode=dry_run) would otherwise read from the data.
  config.dry_run = dict(datasets=dict(
      imagenet=dict(train_examples=1_281_167, num_classes=1000, modalities=("image", "text"))))
  return config

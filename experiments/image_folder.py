r"""Your own images: a folder of class sub-folders, prepared once, then trained with AGD.

The template for your own data (docs/own_data.md walks through it). Two objectives alternate
on one shared encoder, as in the default experiment: classification over the folder's classes
and label-text NCE (the image against the text of its class name, which is what makes
zero-shot classification possible).

  python -m imp.data.prepare image_folder --input photos --output data/photos --resize 32 32
  python -m imp.main --config experiments/image_folder.py --workdir workdirs/photos
  python -m imp.evaluate --config experiments/image_folder.py --workdir workdirs/photos

What it reads from the prepared folder (`metadata.json`): the class names (the classifier's
size and the zero-shot prompts) and the splits. What you set:

  --config.datasets.photos.directory=DIR   the prepared folder (default data/photos)
  --config.total_steps=N                   training length (default 2000)
  :resolution=R                            the side images are trained at (default 32)
  :smoke                                   a seconds-long run (tests, a first try)
"""

import ml_collections

from imp.config.variants import parse_arg

TEMPLATES = ("{}", "a photo of a {}.", "a picture of the {}.")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = parse_arg(arg, "experiments/image_folder.py", words=("smoke",),
                      settings={"resolution": int})
  side = options.get("resolution", 32)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 2000
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.checkpoint_keep = 2
  config.checkpoint_best_metric = "photos/zero_shot_top1"
  config.compilation_cache_dir = ""

  config.datasets = ml_collections.ConfigDict({
      "photos": dict(source="arrayrecord", directory="data/photos", label_templates=TEMPLATES),
  })
  variant = dict(base=dict(batch_size=32, resolution=side, text_length=32))
  config.tasks = ml_collections.ConfigDict({
      "photos_cls": dict(dataset="photos", objective="softmax", modalities=("image",),
                         args=dict(label_smoothing=0.1), variants=variant),
      "photos_label_nce": dict(dataset="photos", objective="nce", modalities=("image", "text"),
                               args=dict(positives="same_label"), variants=variant),
  })
  config.sampling = dict(weighting="size")

  patch = max(side // 8, 1)  # an 8x8 grid of patches: 64 tokens an image at any side
  config.model = dict(
      width=64, depth=4, num_heads=4, mlp_dim=256, embed_dim=64, scan_layers=True,
      vision_patch=(1, patch, patch), vision_base_grid=(1, side // patch, side // patch),
      vision_channels=3, text_max_length=32)
  config.optimizer = dict(name="adam", learning_rate=1e-3, warmup_steps=100, schedule="cosine",
                          grad_clip_norm=1.0)
  config.input = dict(num_threads=2, prefetch=4)
  config.mesh = dict(data=-1)
  config.evals = ml_collections.ConfigDict({
      "photos": dict(dataset="photos", modality="image", resolution=side, text_length=32,
                     train_split="train", test_split="test", batch_size=64,
                     zero_shot=True, linear_probe=True),
  })

  if options.get("smoke"):
    config.total_steps = 8
    config.log_every = 4
    config.eval_every = 0
    config.checkpoint_every = 8
    config.optimizer.warmup_steps = 2
    config.model.update(width=32, depth=1, mlp_dim=64, embed_dim=32)
    for task in config.tasks.values():
      task.variants.base.batch_size = 8
  return config

r"""Fashion-MNIST from Debian's `dataset-fashion-mnist` (or any folder with its IDX files).

AGD over 10-way classification and label-text NCE ("a photo of a sneaker"), each at two
variants with equal tokens per batch: 28x28 images (49 tokens of 4x4 patches) at batch 64,
and DropToken 0.5 at batch 128 (IMP §3.4).

  apt-get install dataset-fashion-mnist
  python -m imp.main --config experiments/fashion_mnist.py --workdir /tmp/fashion
  python -m imp.main --config experiments/fashion_mnist.py \
      --config.datasets.fashion.directory=/path/to/idx/files
"""

import ml_collections

from imp.config.variants import parse_arg
from imp.data.idx_source import FASHION_MNIST_DIR

TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "{}")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 3000
  config.log_every = 200
  config.eval_every = 1500
  config.checkpoint_every = 1500
  config.checkpoint_keep = 2
  # Resume from this checkpoint step (None: the newest intact one).
  config.restore_step = ml_collections.config_dict.placeholder(int)
  config.checkpoint_best_metric = "fashion/zero_shot_top1"
  config.checkpoint_best_mode = "max"
  config.nonfinite = dict(policy="skip", max_consecutive=20)

  config.datasets = ml_collections.ConfigDict({
      "fashion": dict(source="idx", directory=FASHION_MNIST_DIR, preset="fashion_mnist",
                      label_templates=TEMPLATES),
  })
  base = dict(batch_size=64, resolution=28, text_length=32)
  droptoken = dict(batch_size=128, resolution=28, text_length=32, drop_token=0.5)
  config.tasks = ml_collections.ConfigDict({
      "fashion_cls": dict(dataset="fashion", objective="softmax", modalities=("image",),
                          args=dict(label_smoothing=0.1), variants=dict(base=base,
                                                                        droptoken=droptoken)),
      "fashion_label_nce": dict(dataset="fashion", objective="nce", modalities=("image", "text"),
                                args=dict(positives="same_label"),
                                variants=dict(base=base, droptoken=droptoken)),
  })
  config.sampling = dict(weighting="size")
  config.model = dict(
      width=96, depth=4, num_heads=4, mlp_dim=384, embed_dim=64,
      scan_layers=True, remat_policy="none",
      vision_patch=(1, 4, 4), vision_base_grid=(1, 7, 7), vision_channels=1,
      text_max_length=32,
  )
  config.optimizer = dict(name="adam", learning_rate=1e-3, warmup_steps=200, schedule="cosine",
                          grad_clip_norm=1.0)
  config.mesh = dict(data=-1)
  config.input = dict(num_threads=2, prefetch=4)
  # A probe on 60,000 training features with a cross-validated C sweep takes minutes on a
  # laptop CPU; turn it on with --config.evals.fashion.linear_probe=True.
  config.evals = ml_collections.ConfigDict({
      "fashion": dict(dataset="fashion", modality="image", resolution=28, text_length=32,
                      train_split="train", test_split="test", batch_size=500,
                      zero_shot=True, linear_probe=False),
  })
  if parse_arg(arg, "experiments/fashion_mnist.py", words=("smoke",)):
    config.total_steps = 8
    config.log_every = 4
    config.eval_every = 0
    config.checkpoint_every = 8
  return config

r"""The default experiment: AGD on scikit-learn's handwritten digits (real data, no download).

Two objectives alternate on one shared encoder: 10-way classification and label-text NCE (the
image against the text of its class name, as IMP does for ImageNet-21k), each at two
resolution variants: the native 8x8 (16 tokens) and a 16x16 upsampled variant at a quarter of
the batch (64 tokens, same tokens per batch), so four compiled steps alternate.

  python -m imp.main --config experiments/digits.py --workdir /tmp/digits
  python -m imp.main --config experiments/digits.py:smoke --config.total_steps=50

`get_config("smoke")` is a seconds-long run for tests and laptops.
"""

import ml_collections

from imp.config.variants import parse_arg

TEMPLATES = ("{}", "the digit {}", "a handwritten {}", "the number {}", "a drawing of a {}")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 4000
  config.log_every = 100  # steps between console/JSONL/TensorBoard metric writes
  config.eval_every = 2000  # steps between evaluations (and always at the end)
  config.checkpoint_every = 2000  # steps between checkpoints (and always at the end)
  config.checkpoint_keep = 2  # newest checkpoints kept
  # Resume from this checkpoint step (None: the newest intact one).
  config.restore_step = ml_collections.config_dict.placeholder(int)
  # Also keep the checkpoint with the best value of this eval result (None: off).
  config.checkpoint_best_metric = "digits/zero_shot_top1"
  config.checkpoint_best_mode = "max"
  # A non-finite loss or gradient skips that step's update ("skip", counted in the metrics) or
  # stops the run ("stop"); too many consecutive skips stop it too.
  config.nonfinite = dict(policy="skip", max_consecutive=20)
  # JAX's persistent compilation cache: "" = ~/.cache/imp/jax (shared by runs), "off", or a dir.
  config.compilation_cache_dir = ""

  config.datasets = ml_collections.ConfigDict({
      "digits": dict(source="sklearn_digits", test_fraction=0.2, split_seed=0,
                     label_templates=TEMPLATES, augment=dict(translate=0)),
  })

  base = dict(batch_size=64, resolution=8, text_length=24)  # 8x8 -> 16 tokens
  hires = dict(batch_size=16, resolution=16, text_length=24)  # 16x16 -> 64 tokens, 1/4 batch
  config.tasks = ml_collections.ConfigDict({
      "digits_cls": dict(dataset="digits", objective="softmax", modalities=("image",),
                         args=dict(label_smoothing=0.1), loss_weight=1.0,
                         variants=dict(base=base, hires=hires)),
      "digits_label_nce": dict(dataset="digits", objective="nce", modalities=("image", "text"),
                               args=dict(positives="same_label"), loss_weight=1.0,
                               variants=dict(base=base, hires=hires)),
  })
  config.sampling = dict(weighting="size")  # size (IMP) | sqrt | uniform | explicit

  config.model = dict(
      width=64, depth=4, num_heads=4, mlp_dim=256, embed_dim=64,
      scan_layers=True, remat_policy="none",
      vision_patch=(1, 2, 2), vision_base_grid=(1, 4, 4), vision_channels=1,
      text_max_length=24,
      dtype="float32", param_dtype="float32",  # precision policy: float32 | bfloat16
      attention_impl="xla",  # xla | cudnn (GPU)
  )
  config.optimizer = dict(name="adam", learning_rate=2e-3, warmup_steps=100, schedule="cosine",
                          end_lr_fraction=0.0, grad_clip_norm=1.0)

  config.input = dict(num_threads=2, prefetch=4)
  # Device mesh: axis -> size (-1: the remaining devices). Batches split over data x fsdp.
  config.mesh = dict(data=-1)
  config.evals = ml_collections.ConfigDict({
      # IMP evaluates at the largest resolution it trained on (§4.1).
      "digits": dict(dataset="digits", modality="image", resolution=16, text_length=24,
                     train_split="train", test_split="test", batch_size=120,
                     zero_shot=True, linear_probe=True),
  })

  if parse_arg(arg, "experiments/digits.py", words=("smoke",)):
    config.total_steps = 40
    config.log_every = 10
    config.eval_every = 40
    config.checkpoint_every = 20
  return config

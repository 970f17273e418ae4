r"""M3SAT (M3SAT §3, Appendix A): Perceiver front end + sparse MoE self-attention and FFN.

Every input is standardised into a sequence (raw patch pixels, Fourier position features,
one-hot modality code), mapped by ONE shared Perceiver block to 12 latents of width 64
(Table 15), and the latents of a task's modalities are concatenated on the sequence axis
(`Request.fuse`). The encoder is one M3SAT layer: query, key and value projections are
16 linear experts each with THREE independent top-2 routers, and the FFN is a 16-expert top-2
MoE; load and importance balancing losses at 0.1; Adam at 8e-4 with weight decay 1e-3 and no
schedule (Table 15, large setting). Heads: a linear classifier per task.

Tasks run under AGD (one task per step); each task's `loss_weight` is its training loss weight
(the paper's weighted sum of task losses; digits stands in for AV-MNIST's 0.9).

On this machine's bundled real data: scikit-learn digits (16x16, 16 elements of 4x4 patches)
and Debian's Fashion-MNIST (28x28, 49 elements). Held-out accuracy: each classifier head on
its test split.

  python -m imp.main --config experiments/m3sat.py --workdir /tmp/m3sat
  python -m imp.main --config experiments/m3sat.py:smoke --workdir /tmp/m3sat_smoke
"""

import ml_collections

from imp.data.idx_source import FASHION_MNIST_DIR

#               steps log  eval
SCALES = {"default": (1000, 100, 500), "smoke": (6, 3, 0)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if (arg or "default") not in SCALES:
    raise ValueError(f"experiments/m3sat.py: unknown variant {arg!r}; valid: "
                     f"{', '.join(SCALES)}.")
  steps, log_every, eval_every = SCALES[arg or "default"]
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = steps
  config.log_every = log_every
  config.eval_every = eval_every
  config.checkpoint_every = steps
  config.checkpoint_keep = 1
  config.checkpoint_best_metric = None
  config.nonfinite = dict(policy="skip", max_consecutive=20)
  config.datasets = ml_collections.ConfigDict({
      "digits": dict(source="sklearn_digits", test_fraction=0.2, split_seed=0,
                     augment=dict(translate=0)),
      "fashion": dict(source="idx", directory=FASHION_MNIST_DIR, preset="fashion_mnist"),
  })
  config.tasks = ml_collections.ConfigDict({
      "digits_cls": dict(dataset="digits", objective="softmax", modalities=("image",),
                         loss_weight=0.9, variants=dict(base=dict(batch_size=32, resolution=16))),
      "fashion_cls": dict(dataset="fashion", objective="softmax", modalities=("image",),
                          loss_weight=1.0,
                          variants=dict(base=dict(batch_size=32, resolution=28))),
  })
  config.sampling = dict(weighting="sqrt")
  config.model = dict(
      width=64, depth=1, num_heads=8, mlp_dim=128, embed_dim=64,
      scan_layers=True, remat_policy="none",
      vision_patch=(1, 4, 4), vision_base_grid=(1, 4, 4), vision_channels=1,
      front_end="perceiver", perceiver_latents=12, perceiver_bands=6,
      moe=dict(num_experts=16, every=1, router="top_k", condition="token",
               router_args=dict(k=2, capacity_factor_train=1.0, capacity_factor_eval=2.0,
                                importance_loss_weight=0.1, load_loss_weight=0.1,
                                noise_std=1.0 / 16),
               ffn=True, attention="qkv", group_size="example"),
  )
  config.optimizer = dict(name="adamw", learning_rate=8e-4, weight_decay=1e-3, warmup_steps=0,
                          schedule="constant", grad_clip_norm=1.0)
  config.input = dict(num_threads=1, prefetch=2)
  config.mesh = dict(data=-1)
  config.evals = ml_collections.ConfigDict({
      "digits": dict(dataset="digits", modality="image", resolution=16, test_split="test",
                     batch_size=120, zero_shot=False, linear_probe=False, classifier=True),
      "fashion": dict(dataset="fashion", modality="image", resolution=28, test_split="test",
                      batch_size=500, zero_shot=False, linear_probe=False, classifier=True),
  })
  return config

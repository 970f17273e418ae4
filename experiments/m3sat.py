r"""M3SAT (M3SAT §3, Appendix A): Perceiver front end + sparse MoE self-attention and FFN.

Every input is standardised into a sequence (raw patch values, Fourier position features,
one-hot modality code), mapped by ONE shared Perceiver block to 12 latents of width 64
(Table 15), and the latents of a task's modalities are concatenated on the sequence axis
(`Request.fuse`). The encoder is one M3SAT layer: query, key and value projections are
16 linear experts each with THREE independent top-2 routers, and the FFN is a 16-expert top-2
MoE; load and importance balancing losses at 0.1; Adam at 8e-4 with weight decay 1e-3 and no
schedule (Table 15, large setting). Heads: a linear classifier per task, then BatchNorm
(Table 15); the top-2 gates are the softmax values as they are (eq. 2).

Tasks, on the audio-visual digits folders (AV-MNIST's analogue, experiments/av_digits.py):

  images_cls  10-way softmax on 8x8 digit images                   loss weight 1.0
  av_cls      10-way softmax on an image and a spoken digit of the   loss weight 0.9
              same class, FUSED: both modalities' latents on one sequence (AV-MNIST, Table 15)

Both read the same image split, so no test image is trained on. By default every step takes
one batch of each task and makes one update on the weighted sum of their losses, as the paper
(`config.sampling.schedule="weighted_sum"`); `agd` trains one sampled task per step instead.
Held-out accuracy: `images/classifier_top1` and `av/classifier_top1`, the fused head on the
test pairs, whose spoken digits are voices never heard in training.

  python -m imp.data.spoken_digits --output data/av_digits   # once, about 10 s
  python -m imp.main --config experiments/m3sat.py --workdir /tmp/m3sat
  python -m imp.main --config experiments/m3sat.py:agd --workdir /tmp/m3sat_agd
  python -m imp.main --config experiments/m3sat.py:smoke --workdir /tmp/m3sat_smoke

The argument is a comma list: `agd` (AGD instead of the weighted sum), `smoke` (seconds),
`fashion` (adds Fashion-MNIST classification, 14x14, from Debian's dataset-fashion-mnist).
"""

import os

import ml_collections

from imp.config.files import sibling
from imp.config.variants import parse_arg
from imp.data.idx_source import FASHION_MNIST_DIR

_av_digits = sibling("av_digits", __file__)
AUDIO_PATCH, DATA_DIR, SPECTROGRAM = (
    _av_digits.AUDIO_PATCH, _av_digits.DATA_DIR, _av_digits.SPECTROGRAM)

OPTIONS = ("agd", "smoke", "fashion")
#               steps log  eval
SCALES = {"default": (2000, 200, 1000), "smoke": (6, 3, 0)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = parse_arg(arg, "experiments/m3sat.py", words=OPTIONS)
  steps, log_every, eval_every = SCALES["smoke" if "smoke" in options else "default"]
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = steps
  config.log_every = log_every
  config.eval_every = eval_every
  config.checkpoint_every = steps
  config.checkpoint_keep = 1
  # Resume from this checkpoint step (None: the newest intact one).
  config.restore_step = ml_collections.config_dict.placeholder(int)
  config.checkpoint_best_metric = None
  config.nonfinite = dict(policy="skip", max_consecutive=20)
  config.datasets = ml_collections.ConfigDict({
      "images": dict(source="arrayrecord", directory=f"{DATA_DIR}/images"),
      "spoken": dict(source="arrayrecord", directory=f"{DATA_DIR}/spoken"),
      "av": dict(source="paired", first="images", second="spoken", key="label", pair_seed=0),
  })
  config.tasks = ml_collections.ConfigDict({
      "images_cls": dict(dataset="images", objective="softmax", modalities=("image",),
                         loss_weight=1.0, variants=dict(base=dict(batch_size=32, resolution=8))),
      "av_cls": dict(dataset="av", objective="softmax", modalities=("image", "audio"),
                     loss_weight=0.9,
                     variants=dict(base=dict(batch_size=40, resolution=8,
                                             spectrogram=SPECTROGRAM))),
  })
  config.evals = ml_collections.ConfigDict({
      "images": dict(dataset="images", modality="image", resolution=8, test_split="test",
                     batch_size=120, zero_shot=False, linear_probe=False, classifier=True),
      "av": dict(dataset="av", modality="image", resolution=8, spectrogram=SPECTROGRAM,
                 fuse=("image", "audio"), test_split="test", batch_size=120, zero_shot=False,
                 linear_probe=False, classifier=True),
  })
  if "fashion" in options:
    if not os.path.isdir(FASHION_MNIST_DIR):
      raise ValueError(f"experiments/m3sat.py:fashion needs Fashion-MNIST in "
                       f"{FASHION_MNIST_DIR} (Debian: apt-get install dataset-fashion-mnist); "
                       "drop the `fashion` option to train without it.")
    config.datasets.fashion = dict(source="idx", directory=FASHION_MNIST_DIR,
                                   preset="fashion_mnist")
    config.tasks.fashion_cls = dict(dataset="fashion", objective="softmax",
                                    modalities=("image",), loss_weight=1.0,
                                    variants=dict(base=dict(batch_size=32, resolution=14)))
    config.evals.fashion = dict(dataset="fashion", modality="image", resolution=14,
                                test_split="test", batch_size=500, zero_shot=False,
                                linear_probe=False, classifier=True)
  config.sampling = dict(schedule="agd" if "agd" in options else "weighted_sum",
                         weighting="sqrt")  # AGD only: sample tasks by sqrt(dataset size)
  config.model = dict(
      width=64, depth=1, num_heads=8, mlp_dim=128, embed_dim=64,
      scan_layers=True, remat_policy="none",
      vision_patch=(1, 2, 2), vision_base_grid=(1, 4, 4), vision_channels=1,
      audio_patch=AUDIO_PATCH, audio_base_grid=(12, 4),
      front_end="perceiver", perceiver_latents=12, perceiver_bands=6,
      heads=dict(batch_norm=True),  # Table 15: "BatchNorm follow a Linear layer"
      # Eq. 2 weighs the chosen experts by their softmax values, not renormalised over the k.
      moe=dict(num_experts=16, every=1, router="top_k", condition="token",
               router_args=dict(k=2, capacity_factor_train=1.0, capacity_factor_eval=2.0,
                                importance_loss_weight=0.1, load_loss_weight=0.1,
                                noise_std=1.0 / 16),
               ffn=True, attention="qkv", group_size="example", renormalize_gates=False),
  )
  # What the dry run (--mode=dry_run) would otherwise read from the prepared folders.
  config.dry_run = dict(datasets=dict(
      images=dict(train_examples=1438, num_classes=10, modalities=("image",)),
      spoken=dict(train_examples=720, num_classes=10, modalities=("audio",)),
      av=dict(train_examples=1438, num_classes=10, modalities=("image", "audio", "text"))))
  if "fashion" in options:
    config.dry_run.datasets.fashion = dict(train_examples=60000, num_classes=10,
                                           modalities=("image",))
  config.optimizer = dict(name="adamw", learning_rate=8e-4, weight_decay=1e-3, warmup_steps=0,
                          schedule="constant", grad_clip_norm=1.0)
  # One read thread per task (two compete with XLA on a 2-core host); four batches ahead absorb
  # the weighted-sum step reading from every task (docs/data.md, data wait).
  config.input = dict(num_threads=1, prefetch=4)
  config.mesh = dict(data=-1)
  return config

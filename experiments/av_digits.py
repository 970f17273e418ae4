r"""Audio-visual digits: handwritten digit images and spoken digits, from local folders.

Build the folders once (about 10 s; needs espeak-ng), then train (a few minutes on 2 cores):

  python -m imp.data.spoken_digits --output data/av_digits
  python -m imp.main --config experiments/av_digits.py --workdir /tmp/av_digits
  python -m imp.main --config experiments/av_digits.py:smoke --workdir /tmp/av_smoke \
      --config.datasets.images.directory=DIR/prepared/images \
      --config.datasets.spoken.directory=DIR/prepared/spoken

AGD over three task entries, each expanded into IMP's multi-resolution variants at a fixed
tokens-per-batch budget (`variants.auto`, imp/tasks/variants.py):

  images_cls   10-way softmax on 8x8 digit images        base 8x8 | 4x4 | 16x16 | DropToken
  spoken_cls   10-way softmax on log-mel spectrograms     base 96 frames | 48 frames | DropToken
  av_nce       image <-> spoken digit NCE; pairs drawn by label from the two datasets (the
               `paired` source), every same-label pair in a batch is a positive

The spoken test split holds voices never heard in training (imp/data/spoken_digits.py), so
`spoken/classifier_top1` (the trained audio head) and `spoken/linear_probe_top1` (a probe on
frozen features) are held-out audio classification accuracies over unseen voices, and
`av/retrieval/audio_to_image/R@1` (and image_to_audio) is retrieval between the held-out
spoken digits and held-out images: a hit is an image of the spoken digit's class.
"""

import ml_collections

from imp.config.variants import parse_arg

DATA_DIR = "data/av_digits/prepared"
VISION_PATCH = (1, 2, 2)
AUDIO_PATCH = (8, 8)
SPECTROGRAM = (96, 32)  # log-mel frames (10 ms hop) x mel bins, as prepared


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 1500
  config.log_every = 250
  config.eval_every = 0
  config.checkpoint_every = 1500
  config.checkpoint_keep = 1
  # Resume from this checkpoint step (None: the newest intact one).
  config.restore_step = ml_collections.config_dict.placeholder(int)
  config.checkpoint_best_metric = None
  config.checkpoint_best_mode = "max"
  config.nonfinite = dict(policy="skip", max_consecutive=20)

  config.datasets = ml_collections.ConfigDict({
      "images": dict(source="arrayrecord", directory=f"{DATA_DIR}/images",
                     augment=dict(translate=1)),
      "spoken": dict(source="arrayrecord", directory=f"{DATA_DIR}/spoken"),
      "av": dict(source="paired", first="images", second="spoken", key="label", pair_seed=0),
  })
  patches = dict(vision=VISION_PATCH, audio=AUDIO_PATCH)
  config.tasks = ml_collections.ConfigDict({
      "images_cls": dict(
          dataset="images", objective="softmax", modalities=("image",),
          args=dict(label_smoothing=0.1),
          variants=dict(auto=dict(base=dict(resolution=8), tokens_per_batch=1024,
                                  kinds=("base", "half_res", "double_res", "droptoken"),
                                  patches=patches, drop_token=0.5))),
      "spoken_cls": dict(
          dataset="spoken", objective="softmax", modalities=("audio",),
          args=dict(label_smoothing=0.1),
          variants=dict(auto=dict(base=dict(spectrogram=SPECTROGRAM), tokens_per_batch=1536,
                                  kinds=("base", "half_res", "droptoken"), patches=patches,
                                  drop_token=0.5))),
      "av_nce": dict(
          dataset="av", objective="nce", modalities=("image", "audio"),
          args=dict(positives="same_label"),
          variants=dict(auto=dict(base=dict(resolution=8, spectrogram=SPECTROGRAM),
                                  tokens_per_batch=4096, kinds=("base", "half_res"),
                                  patches=patches))),
  })
  config.sampling = dict(weighting="size")
  config.model = dict(
      width=64, depth=3, num_heads=4, mlp_dim=256, embed_dim=64,
      scan_layers=True, remat_policy="none",
      vision_patch=VISION_PATCH, vision_base_grid=(1, 4, 4), vision_channels=1,
      audio_patch=AUDIO_PATCH, audio_base_grid=(12, 4), text_max_length=16,
  )
  config.optimizer = dict(name="adam", learning_rate=2e-3, warmup_steps=100, schedule="cosine",
                          grad_clip_norm=1.0)
  config.mesh = dict(data=-1)
  config.input = dict(num_threads=2, prefetch=4)
  config.evals = ml_collections.ConfigDict({
      "spoken": dict(dataset="spoken", modality="audio", spectrogram=SPECTROGRAM,
                     batch_size=180, zero_shot=False, linear_probe=True, classifier=True),
      # Audio <-> image retrieval on the held-out pairs (unseen voices); any image of the
      # spoken digit's class is a hit.
      "av": dict(dataset="av", modality="image", resolution=8, spectrogram=SPECTROGRAM,
                 batch_size=180, zero_shot=False, linear_probe=False,
                 retrieval=(("image", "audio"),), retrieval_positives="label"),
  })
  if parse_arg(arg, "experiments/av_digits.py", words=("smoke",)):
    config.total_steps = 30
    config.log_every = 10
    config.checkpoint_every = 30
  return config

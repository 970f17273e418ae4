r"""Moving digits: video classification, video<->text and video<->audio NCE, through AGD.

Build the folders once (about 30 s; the spoken digits need espeak-ng), then train:

  python -m imp.data.moving_digits --output data/moving_digits
  python -m imp.data.spoken_digits --output data/av_digits
  python -m imp.main --config experiments/video_digits.py --workdir /tmp/video_digits
  python -m imp.main --config experiments/video_digits.py:smoke --workdir /tmp/video_smoke \
      --config.datasets.videos.directory=DIR/prepared \
      --config.datasets.spoken.directory=DIR/prepared/spoken

The videos are scikit-learn's digits moving on a 16x16 canvas, 16 frames stored at 16 fps
(imp/data/moving_digits.py; one clip per digit image, so no image is in both splits). Clips
are 4 frames sampled at 8 fps (2 frames apart). AGD over three tasks, one per step:

  video_cls        10-way softmax on the clip
  video_text_nce   clip <-> label text ("a video of the digit seven"); same-label positives
  video_audio_nce  clip <-> spoken digit, pairs drawn by label (the `paired` source); every
                   same-label pair in a batch is a positive

Evaluation, all on held-out data (359 videos; spoken digits of 2 unseen voices):

  videos         the middle clip: zero-shot top-1 (prompt ensemble), the trained classifier,
                 a linear probe, and video<->text retrieval R@1/5/10 (a hit: the label text)
  videos_clips   the same with 3 evenly spaced clips per video, outputs averaged over clips
  va             video<->audio retrieval R@1/5/10 (a hit: a spoken digit of the same class)
"""

import ml_collections

from imp.config.variants import parse_arg

VIDEO_DIR = "data/moving_digits/prepared"
SPOKEN_DIR = "data/av_digits/prepared/spoken"
VISION_PATCH = (2, 4, 4)  # frames x pixels: a 4-frame 16x16 clip is 2 x 4 x 4 = 32 tokens
AUDIO_PATCH = (8, 8)
SPECTROGRAM = (96, 32)  # log-mel frames (10 ms hop) x mel bins, as prepared
CLIP = dict(resolution=16, frames=4)
TEMPLATES = ("a video of the digit {}", "the number {}", "{}")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 2000
  config.log_every = 250
  config.eval_every = 0
  config.checkpoint_every = 2000
  config.checkpoint_keep = 1
  # Resume from this checkpoint step (None: the newest intact one).
  config.restore_step = ml_collections.config_dict.placeholder(int)
  config.checkpoint_best_metric = None
  config.checkpoint_best_mode = "max"
  config.nonfinite = dict(policy="skip", max_consecutive=20)

  config.datasets = ml_collections.ConfigDict({
      "videos": dict(source="arrayrecord", directory=VIDEO_DIR, clip_fps=8,
                     label_templates=TEMPLATES),
      "spoken": dict(source="arrayrecord", directory=SPOKEN_DIR),
      "va": dict(source="paired", first="videos", second="spoken", key="label", pair_seed=0),
  })
  config.tasks = ml_collections.ConfigDict({
      "video_cls": dict(dataset="videos", objective="softmax", modalities=("video",),
                        args=dict(label_smoothing=0.1),
                        variants=dict(base=dict(batch_size=32, **CLIP))),
      "video_text_nce": dict(dataset="videos", objective="nce", modalities=("video", "text"),
                             args=dict(positives="same_label"),
                             variants=dict(base=dict(batch_size=32, text_length=24, **CLIP))),
      "video_audio_nce": dict(dataset="va", objective="nce", modalities=("video", "audio"),
                              args=dict(positives="same_label"),
                              variants=dict(base=dict(batch_size=32, spectrogram=SPECTROGRAM,
                                                      **CLIP))),
  })
  config.sampling = dict(weighting="uniform")
  config.model = dict(
      width=64, depth=2, num_heads=4, mlp_dim=256, embed_dim=64,
      scan_layers=True, remat_policy="none",
      vision_patch=VISION_PATCH, vision_base_grid=(2, 4, 4), vision_channels=1,
      audio_patch=AUDIO_PATCH, audio_base_grid=(12, 4), text_max_length=24,
  )
  config.optimizer = dict(name="adam", learning_rate=2e-3, warmup_steps=60, schedule="cosine",
                          grad_clip_norm=1.0)
  config.mesh = dict(data=-1)
  config.input = dict(num_threads=2, prefetch=4)
  video_eval = dict(dataset="videos", modality="video", text_length=24, batch_size=120,
                    zero_shot=True, classifier=True, retrieval=(("video", "text"),),
                    retrieval_positives="label", **CLIP)
  config.evals = ml_collections.ConfigDict({
      "videos": dict(video_eval, clips=1, linear_probe=True),
      "videos_clips": dict(video_eval, clips=3, linear_probe=True),
      "va": dict(dataset="va", modality="video", spectrogram=SPECTROGRAM, batch_size=120,
                 zero_shot=False, linear_probe=False, retrieval=(("video", "audio"),),
                 retrieval_positives="label", **CLIP),
  })
  if parse_arg(arg, "experiments/video_digits.py", words=("smoke",)):
    config.total_steps = 800
    config.log_every = 200
    config.checkpoint_every = 800
  return config

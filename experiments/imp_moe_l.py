r"""IMP-MoE-L: the paper's large sparse model (IMP Table 1, §4.1), video-focused.

A ViT-L-sized shared encoder (24 layers, width 1024, 16 heads, MLP 4096) whose every second
FFN is a 16-expert expert-choice MoE layer (capacity factor 1.0, no routing noise, no
auxiliary loss): about 350M parameters per token and about 2B in total
(tests/test_paper_configs.py). Patches are 4x16x16; base inputs are 16x256x256 videos (1024
tokens) and 4x256x256 images (an image is repeated to fill the 4-frame patch: 256 tokens).
Text is cut to 16 tokens for label text and 256 for captions. Adam at 1e-3, cosine schedule,
no weight decay.

Objectives (§4.1): image-text NCE (LAION, WIT), softmax and label-text NCE (ImageNet-21k),
and on HowTo100M the video-audio-text triplet NCE: the sum of the three pairwise symmetric
losses (video-audio, video-text, audio-text; `nce` over three modalities). AudioSet trains
video-audio NCE: its only text is the label names of a multi-label dataset, where in-batch
diagonal positives would be wrong.

Text is T5's SentencePiece vocabulary (32,000 pieces; ids shift by one for padding, hence
`text_vocab_size=32_001`). The model file is not shipped and nothing downloads it: set
`--config.datasets.laion400m.tokenizer.model_file=/path/to/spm.model` (one shared reference:
setting it for any one dataset sets it for all six; the dry run reads no text and needs
none).

Evaluation: zero-shot top-1 on Kinetics-400 (the paper's headline, Table 1; label names in
the prepared directory's metadata) and video-text and video-audio Recall@1/5/10 on the
HowTo100M test split.

Multi-resolution (§4.1): images train at the base resolution, at twice the resolution with a
quarter of the batch, and with DropToken 0.75; videos (never at the base, which has 4x the
image tokens) at half the resolution, at a quarter of the batch, and with DropToken 0.75, so
every variant has 256 vision tokens per example-equivalent of the image base batch.

Batch: 65536 is the paper's base batch on 256 TPU v4 chips, 256 examples per chip.
`get_config("chips=N")` scales every batch to N chips.

Datasets (§4.1): LAION-400M is read from TFDS (`laion400m`, its `images` config). WebLI, JFT,
WTS-70M and VCC are not public; ImageNet-21k, WIT (TFDS's `wit` holds no images),
HowTo100M and AudioSet are not in TFDS with media, so they are read from directories
prepared with `python -m imp.data.prepare` (set `--config.datasets.<name>.directory`).
A training run without them stops before loading anything, with one message that lists
every dataset still to prepare and the key to set for it. The dry run needs none of them:
`dry_run.datasets` declares their sizes, classes and modalities.

  python -m imp.main --config experiments/imp_moe_l.py --mode=dry_run --cpu_devices=8 \
      --dry_run_batch_divisor=2048
  python -m imp.main --config experiments/imp_moe_l.py:chips=256 --workdir gs://b/imp_moe_l \
      --config.datasets.laion400m.tokenizer.model_file=/path/to/t5/spm.model
"""

import ml_collections
from ml_collections.config_dict import placeholder  # a str field, None until set by a flag

from imp.config.variants import parse_arg

LABEL_TEMPLATES = ("a photo of a {}.", "a video of {}.", "{}")
CHIPS = 256  # the paper's TPU v4 slice
PER_CHIP_BATCH = 256  # 65536 / 256
LABEL_TEXT, CAPTION_TEXT = 16, 256  # text tokens (§4.1)
SPECTROGRAM = (1024, 128)  # AudioMAE's 10 s log-mel: 1024 frames x 128 bins
T5_PIECES = 32_000  # T5's SentencePiece vocabulary; id 0 is padding, so ids run to 32,000


def _image_variants(batch: int, text_length: int) -> dict:
  return dict(
      base=dict(batch_size=batch, resolution=256, text_length=text_length),
      hires=dict(batch_size=batch // 4, resolution=512, text_length=text_length),
      droptoken=dict(batch_size=batch, resolution=256, text_length=text_length,
                     drop_token=0.75),
  )


def _video_variants(batch: int, text_length: int | None = None,
                    spectrogram: tuple[int, int] | None = None) -> dict:
  extra = {k: v for k, v in (("text_length", text_length), ("spectrogram", spectrogram)) if v}
  return dict(
      lowres=dict(batch_size=batch, frames=16, resolution=128, **extra),
      small_batch=dict(batch_size=batch // 4, frames=16, resolution=256, **extra),
      droptoken=dict(batch_size=batch, frames=16, resolution=256, drop_token=0.75, **extra),
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  chips = parse_arg(arg, "experiments/imp_moe_l.py", settings={"chips": int}).get("chips", CHIPS)
  batch = PER_CHIP_BATCH * chips  # 65536 on 256 chips

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 250_000  # ~16B examples at batch 65536 (§4.1)
  config.log_every = 100
  config.eval_every = 10_000
  config.checkpoint_every = 2_000
  config.checkpoint_keep = 3
  # Resume from this checkpoint step (None: the newest intact one).
  config.restore_step = ml_collections.config_dict.placeholder(int)
  config.checkpoint_best_metric = None
  config.nonfinite = dict(policy="skip", max_consecutive=20)

  # One FieldReference for every dataset's SentencePiece model file (see the docstring).
  spm_model = placeholder(str)
  t5 = lambda: dict(name="sentencepiece", model_file=spm_model)  # noqa: E731
  config.datasets = ml_collections.ConfigDict({
      "laion400m": dict(source="tfds", tfds_name="laion400m/images", data_dir=placeholder(str),
                        splits=dict(train="train", test="train[:10000]"),
                        features=dict(image="image", text="caption"), tokenizer=t5()),
      "wit": dict(source="arrayrecord", directory=placeholder(str), tokenizer=t5()),
      "imagenet21k": dict(source="arrayrecord", directory=placeholder(str),
                          label_templates=LABEL_TEMPLATES, tokenizer=t5()),
      "howto100m": dict(source="arrayrecord", directory=placeholder(str), tokenizer=t5()),
      "audioset": dict(source="arrayrecord", directory=placeholder(str),
                       label_templates=LABEL_TEMPLATES, tokenizer=t5()),
      "kinetics400": dict(source="arrayrecord", directory=placeholder(str),
                          label_templates=LABEL_TEMPLATES, tokenizer=t5()),
  })
  config.tasks = ml_collections.ConfigDict({
      "laion_nce": dict(dataset="laion400m", objective="nce", modalities=("image", "text"),
                        variants=_image_variants(batch, CAPTION_TEXT)),
      "wit_nce": dict(dataset="wit", objective="nce", modalities=("image", "text"),
                      variants=_image_variants(batch, CAPTION_TEXT)),
      "i21k_cls": dict(dataset="imagenet21k", objective="softmax", modalities=("image",),
                       variants=_image_variants(batch, LABEL_TEXT)),
      "i21k_label_nce": dict(dataset="imagenet21k", objective="nce",
                             modalities=("image", "text"), args=dict(positives="same_label"),
                             variants=_image_variants(batch, LABEL_TEXT)),
      "howto_nce": dict(dataset="howto100m", objective="nce",  # the triplet NCE
                        modalities=("video", "audio", "text"),
                        variants=_video_variants(batch, text_length=CAPTION_TEXT,
                                                 spectrogram=SPECTROGRAM)),
      "audioset_nce": dict(dataset="audioset", objective="nce", modalities=("video", "audio"),
                           variants=_video_variants(batch, spectrogram=SPECTROGRAM)),
  })
  config.sampling = dict(weighting="size")  # each task by its dataset's size (§4.1)

  config.model = dict(
      width=1024, depth=24, num_heads=16, mlp_dim=4096, embed_dim=1024,
      scan_layers=True, remat_policy="auto", attention_impl="auto",  # per program, per device
      vision_patch=(4, 16, 16), vision_base_grid=(4, 16, 16), vision_channels=3,
      audio_patch=(16, 16), audio_base_grid=(64, 8),  # AudioMAE: 1024 frames x 128 mel
      text_vocab_size=T5_PIECES + 1, text_max_length=CAPTION_TEXT,
      moe=dict(num_experts=16, every=2, router="expert_choice",
               router_args=dict(capacity_factor_train=1.0, capacity_factor_eval=2.0),
               group_size="example", dispatch="einsum"),
  )
  config.optimizer = dict(name="adam", learning_rate=1e-3, warmup_steps=10_000,
                          schedule="cosine", grad_clip_norm=1.0)  # no weight decay
  # Experts over `expert`, width over `fsdp` (imp/parallel/rules.py); data takes the rest.
  # Fits 8 devices and up; on a pod, --config.mesh.expert=16 puts one expert per device.
  config.mesh = dict(data=-1, fsdp=2, expert=4)
  config.mesh_rules = "fsdp"
  config.input = dict(num_threads=16, prefetch=4)
  config.evals = ml_collections.ConfigDict({
      "k400": dict(dataset="kinetics400", modality="video", frames=16, resolution=256,
                   text_length=LABEL_TEXT, batch_size=256, train_split="train",
                   test_split="test", zero_shot=True, linear_probe=False,
                   templates=LABEL_TEMPLATES),
      "howto": dict(dataset="howto100m", modality="video", frames=16, resolution=256,
                    text_length=CAPTION_TEXT, spectrogram=SPECTROGRAM, batch_size=256,
                    train_split="train", test_split="test", zero_shot=False,
                    linear_probe=False, retrieval=(("video", "text"), ("video", "audio")),
                    retrieval_positives="pair"),
  })
  # What the dry run would otherwise read from the data (train examples: approximate).
  config.dry_run = dict(datasets=dict(
      laion400m=dict(train_examples=400_000_000, num_classes=0, modalities=("image", "text")),
      wit=dict(train_examples=37_600_000, num_classes=0, modalities=("image", "text")),
      imagenet21k=dict(train_examples=14_197_122, num_classes=21_843,
                       modalities=("image", "text")),
      howto100m=dict(train_examples=136_000_000, num_classes=0,
                     modalities=("video", "audio", "text")),
      audioset=dict(train_examples=2_042_985, num_classes=527,
                    modalities=("video", "audio", "text")),
      kinetics400=dict(train_examples=240_000, num_classes=400, modalities=("video", "text")),
  ))
  return config

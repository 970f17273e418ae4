"""Per-example transforms in NumPy (they run in grain worker threads, not on the device)."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def _linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] linear interpolation weights with half-pixel centres.

  Matches `jax.image.resize(..., "linear")` for upsampling (and antialias-free downsampling).
  """
  scale = in_size / out_size
  centres = (np.arange(out_size) + 0.5) * scale - 0.5
  centres = np.clip(centres, 0, in_size - 1)
  lo = np.floor(centres).astype(int)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = centres - lo
  weights = np.zeros((out_size, in_size), np.float32)
  weights[np.arange(out_size), lo] += 1.0 - frac
  weights[np.arange(out_size), hi] += frac
  return weights


def as_pixels(resized: np.ndarray, like: np.ndarray) -> np.ndarray:
  """A float resize result in the dtype of its input `like`: integer pixels are rounded back
  (bilinear weights are non-negative and sum to 1, so the result stays in range); float is
  float32."""
  if np.issubdtype(like.dtype, np.integer):
    return np.rint(resized).astype(like.dtype)
  return resized.astype(np.float32, copy=False)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of [height, width, channels] to [size[0], size[1], channels]; uint8 stays
  uint8 (rounded), float gives float32."""
  h, w = image.shape[:2]
  if (h, w) == tuple(size):
    return image
  rows = _linear_resize_matrix(h, size[0])
  cols = _linear_resize_matrix(w, size[1])
  return as_pixels(np.einsum("yh,hwc,xw->yxc", rows, image.astype(np.float32), cols), image)


def normalize_image(image: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1] (host-side, for raw-pixel baselines; the model
  normalises its uint8 inputs itself, `imp.model.embedders.normalize_pixels`)."""
  return image.astype(np.float32) / 127.5 - 1.0


def random_translate(image: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
  """Shifts [height, width, channels] by up to `max_shift` pixels, filling with the minimum."""
  if max_shift <= 0:
    return image
  h, w = image.shape[:2]
  padded = np.pad(
      image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)),
      constant_values=image.min())
  dy, dx = rng.integers(0, 2 * max_shift + 1, size=2)
  return padded[dy:dy + h, dx:dx + w]


def label_text(label: int, class_names: tuple[str, ...], templates: tuple[str, ...],
               rng: np.random.Generator | None) -> str:
  """A prompt for a class: a random template while training, the first one otherwise."""
  template = templates[0] if rng is None else templates[rng.integers(len(templates))]
  return template.format(class_names[label])


AUGMENT_KEYS = ("translate", "random_resized_crop", "flip")


def check_augment(augment: dict, key: str) -> dict:
  """Validated image augmentation settings (config `datasets.<name>.augment`).

  translate: int, max pixel shift; random_resized_crop: True or dict(scale=(lo, hi),
  ratio=(lo, hi)) (Inception-style crop, then resize to the variant's resolution); flip: bool,
  horizontal flip with probability 1/2. Returns the settings with crop defaults filled in.
  """
  unknown = sorted(set(augment) - set(AUGMENT_KEYS))
  if unknown:
    raise ValueError(f"{key}.{unknown[0]} is not an augmentation; valid: "
                     f"{', '.join(AUGMENT_KEYS)}.")
  out = dict(augment)
  crop = out.get("random_resized_crop")
  if crop:
    crop = dict(CROP_DEFAULTS, **(crop if isinstance(crop, dict) else {}))
    unknown = sorted(set(crop) - set(CROP_DEFAULTS))
    if unknown:
      raise ValueError(f"{key}.random_resized_crop.{unknown[0]} is not a setting; valid: "
                       f"{', '.join(CROP_DEFAULTS)}.")
    (s_lo, s_hi), (r_lo, r_hi) = crop["scale"], crop["ratio"]
    if not (0 < s_lo <= s_hi <= 1 and 0 < r_lo <= r_hi):
      raise ValueError(f"{key}.random_resized_crop: need 0 < scale[0] <= scale[1] <= 1 and "
                       f"0 < ratio[0] <= ratio[1], got scale={crop['scale']}, "
                       f"ratio={crop['ratio']}.")
    out["random_resized_crop"] = crop
  return out


CROP_DEFAULTS = {"scale": (0.35, 1.0), "ratio": (3 / 4, 4 / 3)}


def crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
             rng: np.random.Generator, attempts: int = 10) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a random crop covering `scale` of the area at aspect `ratio`.

  Inception-style: the area fraction is uniform in `scale`, the aspect ratio log-uniform in
  `ratio`; after `attempts` boxes that do not fit, the whole image.
  """
  area = height * width
  for _ in range(attempts):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    w = int(round(np.sqrt(target * aspect)))
    h = int(round(np.sqrt(target / aspect)))
    if 0 < h <= height and 0 < w <= width:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  return 0, 0, height, width


def augment_image(image: np.ndarray, augment: dict, rng: np.random.Generator,
                  size: tuple[int, int]) -> np.ndarray:
  """Training augmentation of uint8 (or float) [H, W, C] (settings from `check_augment`).

  Returns [H, W, C], or [size[0], size[1], C] when a random resized crop is taken (resizing
  the crop straight to the output size avoids a second interpolation).
  """
  if augment.get("translate"):
    image = random_translate(image, int(augment["translate"]), rng)
  crop = augment.get("random_resized_crop")
  if crop:
    h, w = image.shape[:2]
    top, left, ch, cw = crop_box(h, w, tuple(crop["scale"]), tuple(crop["ratio"]), rng)
    image = resize_image(image[top:top + ch, left:left + cw], size)
  if augment.get("flip") and rng.random() < 0.5:
    image = image[:, ::-1]
  return image


def clip_indices(num_frames: int, frames: int, stride: int,
                 rng: np.random.Generator | None) -> np.ndarray:
  """int [frames] frame indices of a clip `stride` frames apart in a video of `num_frames`.

  Random start with `rng` (training), else the clip centred in the video (evaluation).
  Indices past the end repeat the last frame.
  """
  if num_frames < 1:
    raise ValueError("video has no frames.")
  span = (frames - 1) * stride + 1
  slack = max(0, num_frames - span)
  start = int(rng.integers(0, slack + 1)) if rng is not None else slack // 2
  return np.minimum(start + stride * np.arange(frames), num_frames - 1)


def spaced_clip_indices(num_frames: int, frames: int, stride: int, clips: int) -> np.ndarray:
  """int [clips, frames] frame indices of `clips` evenly spaced clips of a video (evaluation).

  With slack = how many frames a clip can shift, clip k of K > 1 starts at
  floor(slack * k / (K - 1)): the first at the video's start, the last at its end. One clip is
  the centred clip of `clip_indices(..., rng=None)`. Every clip starts at a different frame,
  so K may be at most slack + 1 (else ValueError). Indices past the end repeat the last frame.
  """
  if num_frames < 1:
    raise ValueError("video has no frames.")
  if clips < 1:
    raise ValueError(f"clips={clips}: need at least 1 clip.")
  span = (frames - 1) * stride + 1
  slack = max(0, num_frames - span)
  if clips > slack + 1:
    raise ValueError(f"a video of {num_frames} frames has {slack + 1} distinct start(s) for a "
                     f"clip of {frames} frames {stride} apart (span {span}), so {clips} clips "
                     f"would repeat one; valid: 1..{slack + 1}.")
  if clips == 1:
    starts = np.array([slack // 2])
  else:
    starts = (slack * np.arange(clips)) // (clips - 1)
  return np.minimum(starts[:, None] + stride * np.arange(frames)[None, :], num_frames - 1)

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


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of float [height, width, channels] to [size[0], size[1], channels]."""
  h, w = image.shape[:2]
  if (h, w) == tuple(size):
    return image
  rows = _linear_resize_matrix(h, size[0])
  cols = _linear_resize_matrix(w, size[1])
  return np.einsum("yh,hwc,xw->yxc", rows, image.astype(np.float32), cols)


def normalize_image(image: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
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

"""Per-batch NumPy versions of the training transforms (one call per batch, not per example).

Random parameters come in as uniform draws in [0, 1) per example (`u`, one row of
`UNIFORMS` columns each), so that a global batch's draws can be made once, from its seed and
index, and each process takes its own rows: the batch of step t is then the same for any
number of processes and after a resume. Images are uint8 [batch, H, W, C] and stay uint8
(resizes round back, `transforms.as_pixels`); the model normalises them on the device.
"""

from __future__ import annotations

import numpy as np

from imp.data import transforms

CROP_ATTEMPTS = 10
# Columns of the per-example uniform draws: [translate dy, dx | crop: attempts x (area,
# aspect), top, left | flip | label template | audio crop | video clip start].
TRANSLATE, CROP, FLIP = 0, 2, 2 + 2 * CROP_ATTEMPTS + 2
TEMPLATE, AUDIO, VIDEO = FLIP + 1, FLIP + 2, FLIP + 3
UNIFORMS = VIDEO + 1


def uniform_int(u: np.ndarray, n: np.ndarray | int) -> np.ndarray:
  """int [...]: floor(u * n) in 0..n-1 (n >= 1) for uniforms `u` in [0, 1)."""
  n = np.asarray(n)
  return np.minimum((u * n).astype(np.int64), np.maximum(n - 1, 0))


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of [B, H, W, C] to [B, size[0], size[1], C] in the input's dtype (as
  `transforms.resize_image` per image)."""
  h, w = images.shape[1:3]
  if (h, w) == tuple(size):
    return images
  rows = transforms._linear_resize_matrix(h, size[0])
  cols = transforms._linear_resize_matrix(w, size[1])
  out = np.matmul(rows, images.astype(np.float32).transpose(0, 3, 1, 2))  # [B, C, y, W]
  return transforms.as_pixels(np.matmul(out, cols.T).transpose(0, 2, 3, 1), images)


def translate(images: np.ndarray, max_shift: int, u: np.ndarray) -> np.ndarray:
  """Shifts every image of [B, H, W, C] by its own (dy, dx) in -max_shift..max_shift,
  filling with that image's minimum (`transforms.random_translate`'s result for a draw of
  offsets dy, dx in 0..2 * max_shift). `u`: [B, 2] uniforms for dy, dx."""
  if max_shift <= 0:
    return images
  b, h, w = images.shape[:3]
  dy, dx = (uniform_int(u[:, k], 2 * max_shift + 1) for k in (0, 1))
  ys = np.arange(h)[None, :] + dy[:, None] - max_shift  # [B, H] source rows
  xs = np.arange(w)[None, :] + dx[:, None] - max_shift
  inside = (((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :])
  picked = images[np.arange(b)[:, None, None], np.clip(ys, 0, h - 1)[:, :, None],
                  np.clip(xs, 0, w - 1)[:, None, :]]
  fill = images.min(axis=(1, 2, 3))[:, None, None, None]
  return np.where(inside[..., None], picked, fill)


def flip(images: np.ndarray, u: np.ndarray) -> np.ndarray:
  """Flips image i of [B, H, W, C] left-right where u[i] < 0.5."""
  return np.where((u < 0.5)[:, None, None, None], images[:, :, ::-1], images)


def crop_boxes(height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], u: np.ndarray) -> np.ndarray:
  """int [B, 4] (top, left, h, w) boxes as `transforms.crop_box`, from uniforms
  u [B, 2 * CROP_ATTEMPTS + 2]: area and aspect of each attempt, then top and left."""
  attempts = u[:, :2 * CROP_ATTEMPTS].reshape(len(u), CROP_ATTEMPTS, 2)
  target = height * width * (scale[0] + attempts[..., 0] * (scale[1] - scale[0]))
  log_lo, log_hi = np.log(ratio[0]), np.log(ratio[1])
  aspect = np.exp(log_lo + attempts[..., 1] * (log_hi - log_lo))
  w = np.round(np.sqrt(target * aspect)).astype(np.int64)
  h = np.round(np.sqrt(target / aspect)).astype(np.int64)
  fits = (h > 0) & (h <= height) & (w > 0) & (w <= width)  # [B, attempts]
  first = np.argmax(fits, axis=1)
  rows = np.arange(len(u))
  h = np.where(fits.any(axis=1), h[rows, first], height)
  w = np.where(fits.any(axis=1), w[rows, first], width)
  top = uniform_int(u[:, -2], height - h + 1)
  left = uniform_int(u[:, -1], width - w + 1)
  return np.stack([top, left, h, w], axis=1)


def _crop_matrices(start: np.ndarray, length: np.ndarray, size: int, full: int) -> np.ndarray:
  """[B, size, full] linear resize weights of the windows [start, start + length) of an axis
  of `full` pixels to `size` (`transforms._linear_resize_matrix` placed at the window)."""
  out = np.zeros((len(start), size, full), np.float32)
  for i, (s, n) in enumerate(zip(start.tolist(), length.tolist(), strict=True)):
    out[i, :, s:s + n] = transforms._linear_resize_matrix(n, size)
  return out


def crop_resize(images: np.ndarray, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[B, H, W, C] in the input's dtype: box i (top, left, h, w) of image i resized to
  [size[0], size[1]] (`transforms.resize_image` of the crop), as one batched matrix product."""
  h, w = images.shape[1:3]
  rows = _crop_matrices(boxes[:, 0], boxes[:, 2], size[0], h)  # [B, y, H]
  cols = _crop_matrices(boxes[:, 1], boxes[:, 3], size[1], w)  # [B, x, W]
  out = np.matmul(rows[:, None], images.astype(np.float32).transpose(0, 3, 1, 2))
  out = np.matmul(out, cols[:, None].transpose(0, 1, 3, 2)).transpose(0, 2, 3, 1)
  return transforms.as_pixels(out, images)


def augment(images: np.ndarray, settings: dict, u: np.ndarray,
            size: tuple[int, int]) -> np.ndarray:
  """`transforms.augment_image` for a batch [B, H, W, C] with uniforms u [B, UNIFORMS]:
  translate, then random resized crop (straight to `size`), then flip."""
  if settings.get("translate"):
    images = translate(images, int(settings["translate"]), u[:, TRANSLATE:TRANSLATE + 2])
  crop = settings.get("random_resized_crop")
  if crop:
    boxes = crop_boxes(images.shape[1], images.shape[2], tuple(crop["scale"]),
                       tuple(crop["ratio"]), u[:, CROP:FLIP])
    images = crop_resize(images, boxes, size)
  if settings.get("flip"):
    images = flip(images, u[:, FLIP])
  return images


def crop_or_pad(x: np.ndarray, length: int, u: float) -> np.ndarray:
  """A `length`-long window of [time, ...] starting at floor(u * (slack + 1)) (as
  `audio.random_crop`); shorter inputs are zero-padded at the end."""
  if len(x) <= length:
    pad = [(0, length - len(x))] + [(0, 0)] * (x.ndim - 1)
    return np.pad(x, pad)
  start = int(uniform_int(np.asarray(u), len(x) - length + 1))
  return x[start:start + length]


def clip_indices(num_frames: int, frames: int, stride: int, u: float) -> np.ndarray:
  """`transforms.clip_indices` with the random start floor(u * (slack + 1))."""
  if num_frames < 1:
    raise ValueError("video has no frames.")
  slack = max(0, num_frames - ((frames - 1) * stride + 1))
  start = int(uniform_int(np.asarray(u), slack + 1))
  return np.minimum(start + stride * np.arange(frames), num_frames - 1)

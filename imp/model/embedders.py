"""Modality embedders: raw inputs -> tokens [B, N, D] in the encoder's shared space.

Vision follows VATT: 3D patches of a video (an image is a one-frame video, repeated to fill
the temporal patch). Audio is a spectrogram cut into 2D patches (AudioMAE). Text is a token
embedding (T5). Each adds a learnable position table defined on a *base* grid; a variant with
another grid (multi-resolution training, IMP §3.4) gets the table resized to its grid, so all
variants share one set of position parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from imp.model import logical

Array = jax.Array


class GridPositions(nn.Module):
  """Learnable positions on `base_grid`, linearly resized to the requested grid.

  Returns [*grid, D].
  """

  base_grid: Sequence[int]
  width: int
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, grid: Sequence[int]) -> Array:
    axes = tuple(f"pos_{i}" for i in range(len(self.base_grid))) + ("embed",)
    table = self.param("table", logical.normal(0.02, *axes), (*self.base_grid, self.width),
                       self.param_dtype)
    if tuple(grid) == tuple(self.base_grid):
      return table
    return jax.image.resize(table, (*grid, self.width), method="linear")


def input_dtype(modality: str, compute_dtype) -> jnp.dtype:
  """The dtype a modality's batch reaches the model in (the pipeline's, and the plan's
  abstract batch): image and video uint8 (`normalize_pixels` runs inside the step), audio
  spectrograms in the compute dtype, text ids int32."""
  if modality in ("image", "video"):
    return jnp.dtype(jnp.uint8)
  if modality == "audio":
    return jnp.dtype(compute_dtype)
  if modality == "text":
    return jnp.dtype(jnp.int32)
  raise ValueError(f"unknown modality {modality!r}; valid: image, video, audio, text.")


def normalize_pixels(x: Array, dtype) -> Array:
  """Pixels in `dtype`: integer (uint8 [0, 255]) -> x / 127.5 - 1 in [-1, 1]; float inputs are
  taken as already in [-1, 1] and only cast. Done inside the compiled step so that images and
  video cross host memory and the host-to-device link as uint8, 4x smaller than float32."""
  if jnp.issubdtype(x.dtype, jnp.integer):
    return x.astype(dtype) / jnp.asarray(127.5, dtype) - jnp.asarray(1, dtype)
  return x.astype(dtype)


def patchify(x: Array, patch: Sequence[int]) -> tuple[Array, tuple[int, ...]]:
  """Cuts [B, *spatial, C] into non-overlapping patches.

  Returns ([B, *grid, prod(patch) * C], grid) with grid[i] = spatial[i] // patch[i].
  """
  b, *spatial, c = x.shape
  for i, (size, p) in enumerate(zip(spatial, patch, strict=True)):
    if size % p:
      raise ValueError(f"input axis {i + 1} has size {size}, not divisible by patch {p}.")
  grid = tuple(s // p for s, p in zip(spatial, patch, strict=True))
  shape = [b]
  for g, p in zip(grid, patch, strict=True):
    shape += [g, p]
  x = x.reshape(*shape, c)
  n = len(grid)
  # [B, g0, p0, g1, p1, ..., C] -> [B, g0, g1, ..., p0, p1, ..., C]
  order = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [1 + 2 * n]
  x = x.transpose(order)
  return x.reshape(b, *grid, -1), grid


class PatchEmbedder(nn.Module):
  """[B, *spatial, C] -> tokens [B, prod(spatial / patch), D]: patches, projection, positions.

  Subclasses adapt their raw input in `prepare`.
  """

  width: int
  patch: Sequence[int]
  base_grid: Sequence[int]
  dtype: str = "float32"
  param_dtype: str = "float32"

  def prepare(self, x: Array) -> Array:
    return x

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = self.prepare(x)
    patches, grid = patchify(x, self.patch)
    tokens = nn.Dense(self.width, kernel_init=logical.kernel("patch", "embed"),
                      bias_init=logical.zeros("embed"), dtype=self.dtype,
                      param_dtype=self.param_dtype, name="patch_proj")(patches)
    pos = GridPositions(self.base_grid, self.width, self.param_dtype, name="pos")(grid)
    tokens = tokens + pos.astype(tokens.dtype)
    return tokens.reshape(x.shape[0], -1, self.width)


class VisionEmbedder(PatchEmbedder):
  """Images [B, H, W, C] or videos [B, F, H, W, C] -> tokens [B, F/pt * H/ph * W/pw, D].

  Pixels are uint8 (normalised here, `normalize_pixels`) or float in [-1, 1]. patch is
  (pt, ph, pw); base_grid is the (tf, th, tw) token grid of the base resolution.
  """

  def prepare(self, x: Array) -> Array:
    x = normalize_pixels(x, self.dtype)
    if x.ndim == 4:
      x = x[:, None]
    if x.ndim != 5:
      raise ValueError(f"vision input must be [B, H, W, C] or [B, F, H, W, C], got {x.shape}.")
    if x.shape[1] == 1 and self.patch[0] > 1:
      x = jnp.repeat(x, self.patch[0], axis=1)  # an image is a still video filling one patch
    return x


class AudioEmbedder(PatchEmbedder):
  """Spectrograms [B, T, Q, 1] -> tokens [B, T/pt * Q/pq, D]; patch is (pt, pq)."""

  def prepare(self, x: Array) -> Array:
    if x.ndim != 4:
      raise ValueError(f"audio input must be a spectrogram [B, T, Q, 1], got {x.shape}.")
    return x


class TextEmbedder(nn.Module):
  """Token ids [B, L] -> tokens [B, L, D].

  Positions are sliced, not resized, for shorter texts: position i of a 16-token label means
  the same as position i of a 256-token caption.
  """

  width: int
  vocab_size: int
  max_length: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, ids: Array) -> Array:
    length = ids.shape[1]
    if length > self.max_length:
      raise ValueError(f"text length {length} exceeds model.text.max_length={self.max_length}.")
    embed = nn.Embed(
        self.vocab_size, self.width, name="token", dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=logical.normal(0.02, "vocab", "embed"))
    pos = GridPositions((self.max_length,), self.width, self.param_dtype,
                        name="pos")((self.max_length,))
    # FSDP: the table is gathered whole over the width before the lookup, as every layer's
    # weights are. Looked up in a width-split table, the tokens came out width-split, and
    # the partitioner replicated the batch-split gradients of the encoder's backward loop
    # whole to reshard them (XLA's "involuntary full rematerialization").
    table = logical.constrain(jnp.asarray(embed.embedding, self.dtype), "vocab", None)
    return jnp.take(table, ids, axis=0) + pos[:length].astype(self.dtype)

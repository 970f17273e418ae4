"""The M3SAT front end (M3SAT §3.1, Appendix A.1-A.2): any modality -> a fixed number of latents.

Per modality, the input is standardised into a sequence (Algorithm 1 of the appendix):
raw features of each element (pixels of a patch, bins of a spectrogram patch, or a learned
embedding of a text token), zero padding up to the widest modality, Fourier position features
of the element's 1D/2D/3D position, and a one-hot modality code. ONE shared Perceiver block
(cross-attention from learned latents to that sequence, then a latent self-attention layer)
maps every modality to `num_latents` tokens of width D; the IMP model then concatenates the
modalities of a task on the sequence axis and runs the (MoE) encoder.

Shapes: B batch, T elements of a modality, P raw features per element, L latents, D width,
F Fourier bands, A axes of the position grid (1 text, 2 audio, 3 vision).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imp.model import logical
from imp.model.attention import attend
from imp.model.conditions import MODALITY_IDS, modality_id
from imp.model.embedders import normalize_pixels, patchify
from imp.model.encoder import EncoderBlock

Array = jax.Array


def fourier_features(grid: Sequence[int], num_bands: int, max_freq: float | None = None,
                     freq_base: float | None = None) -> np.ndarray:
  """Fourier position features of every cell of `grid` (Perceiver; M3SAT Algorithm 1).

  Positions run over [-1, 1] on each axis (a length-1 axis sits at -1). Each axis gives its
  position p and sin(pi f p), cos(pi f p) for F bands f:
    freq_base None:  f = linspace(1, max_freq / 2, F)                 (Perceiver IO)
    freq_base b:     f = b ** linspace(1, log_b(max_freq / 2), F)     (the Perceiver code
                     M3SAT's `fourier_encode(pos_dim, max_freq, num_freq_bands, freq_base)`
                     follows; M3SAT Tables 13-15 set max_freq = 1, so f falls from b to 1/2)
  where max_freq defaults to the axis length (its Nyquist frequency).

  Returns: float32 [prod(grid), A * (2F + 1)], cells in row-major order, per axis
  [p, sin..., cos...].
  """
  if max_freq is not None and not max_freq > 0:
    raise ValueError(f"fourier_features: max_freq={max_freq!r} must be > 0.")
  if freq_base is not None and not freq_base > 1:
    raise ValueError(f"fourier_features: freq_base={freq_base!r} must be > 1.")
  axes = [np.linspace(-1.0, 1.0, n) for n in grid]
  pos = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(grid))
  sines, cosines = [], []
  for a, n in enumerate(grid):
    top = (max_freq or n) / 2.0
    if freq_base is None:
      freqs = np.linspace(1.0, top, num_bands)
    else:
      freqs = freq_base ** np.linspace(1.0, math.log(top) / math.log(freq_base), num_bands)
    angles = math.pi * pos[:, a:a + 1] * freqs[None]
    sines.append(np.sin(angles))
    cosines.append(np.cos(angles))
  per_axis = [np.concatenate([pos[:, a:a + 1], sines[a], cosines[a]], axis=1)
              for a in range(len(grid))]
  return np.concatenate(per_axis, axis=1).astype(np.float32)


def position_axes(modality: str) -> int:
  """A: the number of position axes of a modality's element grid."""
  return {"image": 3, "video": 3, "audio": 2, "text": 1}[MODALITY_IDS[modality_id(modality)]]


class PerceiverFrontEnd(nn.Module):
  """(modality, raw input) -> (latents [B, L, D], mask bool [B, L]).

  Attributes:
    width: D.
    num_latents: L, the same for every modality (M3SAT: 12 or 20).
    num_heads: heads of the latent self-attention (the cross-attention has one head, as M3SAT).
    mlp_dim: hidden width of the block's feed-forward layers.
    num_bands: F, Fourier bands per axis.
    raw_dims: (modality, P) of every modality the model reads, to size the padding.
    vision_patch, audio_patch: element sizes of vision and audio inputs.
    text_vocab_size: token vocabulary of the text embedding.
    max_freq: (modality, max_freq) of the modalities whose Fourier features do not use the
      axis length (see `fourier_features`).
    freq_base: (modality, base) of the modalities with log-spaced Fourier bands.
  """

  width: int
  num_latents: int
  num_heads: int
  mlp_dim: int
  num_bands: int
  raw_dims: tuple[tuple[str, int], ...]
  vision_patch: tuple[int, int, int]
  audio_patch: tuple[int, int]
  text_vocab_size: int
  max_freq: tuple[tuple[str, float], ...] = ()
  freq_base: tuple[tuple[str, float], ...] = ()
  attention_impl: str = "xla"
  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def input_dim(self) -> int:
    """max over modalities of (P + position features), plus the one-hot modality code."""
    widest = max(p + position_axes(m) * (2 * self.num_bands + 1) for m, p in self.raw_dims)
    return widest + len(MODALITY_IDS)

  def _elements(self, modality: str, x: Array) -> tuple[Array, tuple[int, ...]]:
    """Raw features [B, T, P] and the element grid."""
    if modality in ("image", "video"):
      x = normalize_pixels(x, jnp.float32)  # the raw features enter in float32, as below
      if x.ndim == 4:
        x = x[:, None]
      if x.shape[1] == 1 and self.vision_patch[0] > 1:
        x = jnp.repeat(x, self.vision_patch[0], axis=1)
      patches, grid = patchify(x, self.vision_patch)
    elif modality == "audio":
      patches, grid = patchify(x, self.audio_patch)
    else:
      embed = nn.Embed(self.text_vocab_size, self.width, name="text_embed",
                       embedding_init=logical.normal(0.02, "vocab", "embed"))
      return embed(x), (x.shape[1],)
    return patches.reshape(x.shape[0], -1, patches.shape[-1]), grid

  @nn.compact
  def __call__(self, modality: str, x: Array) -> tuple[Array, Array]:
    dims = dict(self.raw_dims)
    if modality not in dims:
      raise ValueError(f"perceiver front end has no {modality!r} input; modalities: "
                       f"{sorted(dims)}.")
    raw, grid = self._elements(modality, x)
    b, t, p = raw.shape
    if p != dims[modality]:
      raise ValueError(f"{modality} elements have {p} features; the front end was sized for "
                       f"{dims[modality]}.")
    pos = fourier_features(grid, self.num_bands, dict(self.max_freq).get(modality),
                           dict(self.freq_base).get(modality))
    code = np.eye(len(MODALITY_IDS), dtype=np.float32)[modality_id(modality)]
    pad = self.input_dim - len(MODALITY_IDS) - p - pos.shape[1]
    extra = np.concatenate([np.zeros((t, pad), np.float32), pos, np.tile(code, (t, 1))], 1)
    seq = jnp.concatenate([raw.astype(jnp.float32),
                           jnp.broadcast_to(jnp.asarray(extra), (b, t, extra.shape[1]))], -1)
    latents = self.param("latents", logical.normal(0.02, "latents", "embed"),
                         (self.num_latents, self.width), self.param_dtype)
    norm = lambda name: logical.layer_norm(name, self.dtype, self.param_dtype)  # noqa: E731
    kv_in = norm("ln_inputs")(
        nn.Dense(self.width, kernel_init=logical.kernel("patch", "embed"),
                 bias_init=logical.zeros("embed"), dtype=self.dtype, param_dtype=self.param_dtype,
                 name="input_proj")(seq))
    proj = lambda name: nn.Dense(  # noqa: E731
        self.width, use_bias=False, kernel_init=logical.kernel("embed", "kv"), dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    q = proj("query")(norm("ln_latents")(latents))
    k, v = proj("key")(kv_in), proj("value")(kv_in)
    # One head of width D (M3SAT), every input element visible.
    attended = attend(jnp.broadcast_to(q, (b, *q.shape))[:, :, None], k[:, :, None],
                      v[:, :, None], impl=self.attention_impl)[:, :, 0]  # [B, L, D]
    z = latents[None].astype(self.dtype) + nn.Dense(
        self.width, kernel_init=logical.kernel("kv", "embed"), bias_init=logical.zeros("embed"),
        dtype=self.dtype, param_dtype=self.param_dtype, name="cross_out")(attended)
    # The latent self-attention layer of Figure 5, a dense pre-LN block.
    mask = jnp.ones((b, self.num_latents), bool)
    z, _ = EncoderBlock(self.width, self.num_heads, self.mlp_dim,
                        attention_impl=self.attention_impl, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="latent_block")(z, mask)
    return z, mask

"""IMPModel: embed each input modality, run the shared encoder, apply the requested heads.

The model knows modalities and head names, never tasks: a step passes a `Request` saying which
outputs it needs, and only those submodules run (so only their parameters get gradients).
For conditional MoE routing (imp.model.conditions) a Request carries each modality's task id
and token attributes (`Request.routes`), which the plan computes (imp/plan/routing.py).

Front ends (`model.front_end`): "patch" embeds each modality with its own patch/token embedder
(IMP); "perceiver" standardises any modality and maps it to a fixed number of latents with one
shared Perceiver block (M3SAT).

Outputs (keys of the returned dict):
  "logits/<head>":      [B, C] classifier logits on the average-pooled encoding.
  "embedding/<modality>": [B, E] L2-normalised projection into the common space (CLIP-style).
  "features/<modality>":  [B, D] average-pooled encoder output (for linear probes).
  "logit_scale":        [] the learnable inverse temperature, when any embedding is requested.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imp.model import logical
from imp.model.attention import check_attention_impl, resolve_attention_impl
from imp.model.conditions import (
    StaticCondition,
    TokenCondition,
    modality_id,
    roles_of,
    token_attributes,
)
from imp.model.embedders import AudioEmbedder, TextEmbedder, VisionEmbedder, input_dtype
from imp.model.encoder import (
    Encoder,
    MoeConfig,
    check_residual_options,
    drop_tokens,
    layers_per_unit,
)
from imp.model.heads import ClassifierHead, HeadsConfig
from imp.model.layer_stack import REMAT_AUTO, resolve_scan_unroll
from imp.model.perceiver import PerceiverFrontEnd

Array = jax.Array

# Which embedder family reads each modality: an image is a one-frame video.
EMBEDDER_OF = {"image": "vision", "video": "vision", "audio": "audio", "text": "text"}
FRONT_ENDS = ("patch", "perceiver")
DTYPES = ("float32", "bfloat16")


def _per_modality(key: str, value: Any, low: float) -> tuple[tuple[str, float], ...]:
  """{modality: number > low} from config -> sorted (modality, float) pairs (hashable)."""
  if value is None:
    return ()
  items = dict(value).items() if isinstance(value, Mapping) or hasattr(value, "items") else value
  out = []
  for modality, number in items:
    if modality not in EMBEDDER_OF:
      raise ValueError(f"{key}.{modality}: not a modality; valid: {', '.join(EMBEDDER_OF)}.")
    if isinstance(number, bool) or not isinstance(number, int | float) or not number > low:
      raise ValueError(f"{key}.{modality}={number!r} must be a number > {low:g}.")
    out.append((str(modality), float(number)))
  return tuple(sorted(out))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Model hyper-parameters (config key `model`).

  Attributes:
    width: model dimension D.
    depth: encoder layers.
    num_heads: attention heads.
    mlp_dim: hidden size of the feed-forward blocks.
    embed_dim: width E of the common contrastive space.
    scan_layers: roll layers with nn.scan.
    scan_unroll: scanned units per loop iteration (nn.scan's unroll; the parameters keep
      their stacked layout whatever it is), or "auto": the whole scan on CPU (one iteration:
      the unrolled step time, measured in docs/benchmarks.md) and 1 on GPU and TPU (the
      compile stays one layer's at any depth, as IMP scans its layers).
    remat_policy: a key of imp.model.REMAT_POLICIES (none, dots_saveable, full, ...), the
      rematerialisation of each layer; or "auto": per train program the least recomputation
      (none, dots_saveable, full) whose compiled program fits config.device_memory_limit or
      the device's memory with 10% to spare (imp.plan.programs).
    vision_patch: (pt, ph, pw) patch of videos; images fill pt by repetition.
    vision_base_grid: (tf, th, tw) token grid of the base vision resolution.
    vision_channels: input channels.
    audio_patch: (pt, pq) spectrogram patch.
    audio_base_grid: (tt, tq) token grid of the base spectrogram.
    text_vocab_size: text embedding rows (at least every tokenizer's largest id + 1).
    text_max_length: longest text (positions are defined up to it).
    logit_scale_init: initial inverse temperature of contrastive logits (CLIP: 1 / 0.07).
    logit_scale_max: the inverse temperature is clipped to this (CLIP: 100).
    moe: Mixture-of-Experts placement and routing (`model.moe`; dense by default).
    heads: classifier-head settings (`model.heads`: batch_norm, a BatchNorm after the linear
      layer as M3SAT has it, with its momentum and epsilon).
    layer_scale: LayerScale's initial gamma on every encoder residual branch, or None (off;
      Uni-Perceiver-MoE: 1e-3). See imp.model.encoder.
    stochastic_depth: uniform drop rate of the encoder's residual branches in training (0:
      off). Needs the rng stream "stochastic_depth", which the train step passes.
    front_end: "patch" (per-modality embedders, IMP) or "perceiver" (M3SAT's shared
      Perceiver block over standardised inputs with Fourier positions and a modality code).
    perceiver_latents: latents per modality of the perceiver front end (M3SAT: 12 or 20).
    perceiver_bands: Fourier bands per position axis of the perceiver front end (M3SAT: 6).
    perceiver_max_freq: {modality: max_freq} of the perceiver's Fourier features (M3SAT
      Tables 13-15: 1); a modality not listed uses each axis's length.
    perceiver_freq_base: {modality: base} for log-spaced Fourier bands (the Perceiver code
      M3SAT follows); a modality not listed gets linearly spaced bands.
    attention_impl: the implementation of every attention (encoder, attention experts,
      Perceiver, context pool) through jax.nn.dot_product_attention: a key of
      imp.model.attention.ATTENTION_IMPLS ("xla", or "cudnn" on a GPU), or "auto": cudnn on
      a GPU with bfloat16/float16 activations, else xla.
    dtype: the computation dtype of every embedder, encoder layer, expert, the Perceiver and
      the heads ("float32" or "bfloat16"). Softmax, LayerNorm and BatchNorm statistics, router
      probabilities, pooled features, normalised embeddings (hence the contrastive logits),
      head logits and the losses stay float32 whatever it is.
    param_dtype: the dtype parameters are stored in ("float32" or "bfloat16"), except the
      contrastive temperature, the router kernels and BatchNorm heads (float32); the optimizer
      moments are float32 either way (imp.step.state.float32_moments).
  """

  width: int = 64
  depth: int = 4
  num_heads: int = 4
  mlp_dim: int = 256
  embed_dim: int = 64
  scan_layers: bool = True
  scan_unroll: int | str = "auto"
  remat_policy: str = "none"
  vision_patch: tuple[int, int, int] = (1, 2, 2)
  vision_base_grid: tuple[int, int, int] = (1, 4, 4)
  vision_channels: int = 1
  audio_patch: tuple[int, int] = (4, 4)
  audio_base_grid: tuple[int, int] = (8, 8)
  text_vocab_size: int = 258
  text_max_length: int = 32
  logit_scale_init: float = 1.0 / 0.07
  logit_scale_max: float = 100.0
  moe: MoeConfig = MoeConfig()
  heads: HeadsConfig = HeadsConfig()
  layer_scale: float | None = None
  stochastic_depth: float = 0.0
  front_end: str = "patch"
  perceiver_latents: int = 12
  perceiver_bands: int = 6
  perceiver_max_freq: tuple[tuple[str, float], ...] = ()
  perceiver_freq_base: tuple[tuple[str, float], ...] = ()
  attention_impl: str = "xla"
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> ModelConfig:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - set(fields))
    if unknown:
      raise ValueError(f"model.{unknown[0]} is not a model setting; valid: {', '.join(fields)}.")
    # The declared defaults, then the config's values: no default restated below.
    values = {name: f.default for name, f in fields.items()
              if f.default is not dataclasses.MISSING}
    values.update({k: tuple(v) if isinstance(v, list | tuple) else v for k, v in cfg.items()})
    values["moe"] = MoeConfig.from_config(cfg.get("moe"))
    values["heads"] = HeadsConfig.from_config(cfg.get("heads"))
    check_residual_options(values["layer_scale"], values["stochastic_depth"])
    for key, low in (("perceiver_max_freq", 0.0), ("perceiver_freq_base", 1.0)):
      values[key] = _per_modality(f"model.{key}", cfg.get(key), low)
    # Resolved against the scanned units (MoE: `moe.every` layers each), the loop's real length,
    # so the programs table reports the unroll the encoder compiles.
    units = max(1, values["depth"] // layers_per_unit(values["moe"]))
    values["scan_unroll"] = resolve_scan_unroll(values["scan_unroll"], units)
    values["attention_impl"] = resolve_attention_impl(values["attention_impl"], values["dtype"])
    check_attention_impl(values["attention_impl"])
    if values["remat_policy"] == "auto":  # imp.plan.programs picks per program
      values["remat_policy"] = REMAT_AUTO[0]
    for key in ("dtype", "param_dtype"):
      if values[key] not in DTYPES:
        raise ValueError(f"model.{key}={values[key]!r} is not known; valid: "
                         f"{', '.join(repr(d) for d in DTYPES)}.")
    if values["front_end"] not in FRONT_ENDS:
      raise ValueError(f"model.front_end={values['front_end']!r} is not known; valid: "
                       f"{', '.join(FRONT_ENDS)}.")
    return cls(**values)

  def raw_dim(self, modality: str) -> int:
    """Features per input element as the perceiver front end reads them."""
    if modality in ("image", "video"):
      return int(np.prod(self.vision_patch)) * self.vision_channels
    if modality == "audio":
      return int(np.prod(self.audio_patch))
    return self.width  # text: a learned token embedding

  def dummy_input(self, modality: str, batch: int = 1) -> np.ndarray:
    """A zero input (ones for text) of the base shape, in the dtype batches reach the model in
    (`embedders.input_dtype`), for initialisation. Not a task's batch: those are
    `imp.plan.abstract_batch`, at each variant's shapes."""
    if modality not in EMBEDDER_OF:
      raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(EMBEDDER_OF)}.")
    dtype = input_dtype(modality, self.dtype)
    if modality == "image":
      _, th, tw = self.vision_base_grid
      return np.zeros((batch, th * self.vision_patch[1], tw * self.vision_patch[2],
                       self.vision_channels), dtype)
    if modality == "video":
      shape = [g * p for g, p in zip(self.vision_base_grid, self.vision_patch, strict=True)]
      return np.zeros((batch, *shape, self.vision_channels), dtype)
    if modality == "audio":
      shape = [g * p for g, p in zip(self.audio_base_grid, self.audio_patch, strict=True)]
      return np.zeros((batch, *shape, 1), dtype)
    return np.ones((batch, self.text_max_length), dtype)


@dataclasses.dataclass(frozen=True)
class Request:
  """The outputs one step needs (static: part of the compiled step's identity).

  Attributes:
    classify: (modality, head name) pairs: logits of that head on that modality.
    embed: modalities to project into the common space.
    features: modalities whose pooled encoder features to return.
    fuse: modalities whose tokens are concatenated on the sequence axis into ONE encoder
      pass whose pooled output feeds the `classify` heads (M3SAT); with fewer than two, each
      modality is encoded alone (IMP).
    routes: (modality, task id, attribute bits) of the tokens of each modality, for task and
      attribute routing (Uni-Perceiver-MoE); the plan fills them in (imp/plan/routing.py). A
      modality without a route has task id 0 and the attributes of this request's own roles.
    merge_experts: run the MoE layers with the experts of each encoder pass's condition merged
      into dense layers (Uni-Perceiver-MoE §3.3; data-independent conditions only, one
      modality per pass): the routed model's outputs without routing or dispatch.
  """

  classify: tuple[tuple[str, str], ...] = ()
  embed: tuple[str, ...] = ()
  features: tuple[str, ...] = ()
  fuse: tuple[str, ...] = ()
  routes: tuple[tuple[str, int, tuple[int, ...]], ...] = ()
  merge_experts: bool = False

  @property
  def modalities(self) -> tuple[str, ...]:
    wanted = [m for m, _ in self.classify] + list(self.embed) + list(self.features)
    return tuple(dict.fromkeys(wanted))

  @property
  def label(self) -> str:
    """E.g. "embed image, features image", for logs and tables."""
    parts = [("classify", [f"{m}->{h}" for m, h in self.classify]), ("embed", self.embed),
             ("features", self.features), ("fuse", self.fuse)]
    return ", ".join(f"{k} {'+'.join(v)}" for k, v in parts if v) or "nothing"


def masked_mean(x: Array, mask: Array) -> Array:
  """Mean of [B, N, D] over real tokens (mask bool [B, N]) -> [B, D]."""
  weights = mask.astype(jnp.float32)[..., None]  # summed in float32 whatever x's dtype
  return (x.astype(jnp.float32) * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)


class IMPModel(nn.Module):
  """Embedders -> shared encoder -> classifier heads and contrastive projections.

  Attributes:
    config: ModelConfig.
    heads: (head name, number of classes) of every classifier, e.g. one per dataset.
    modalities: modalities the model embeds (one projection head each).
    num_tasks: rows of the task embedding of task routing (the task ids Requests carry).
  """

  config: ModelConfig
  heads: Sequence[tuple[str, int]] = ()
  modalities: Sequence[str] = ("image", "text")
  num_tasks: int = 0

  def setup(self):
    c = self.config
    families = {EMBEDDER_OF[m] for m in self.modalities}
    embedders = {}
    if c.front_end == "perceiver":
      self.front = PerceiverFrontEnd(
          c.width, c.perceiver_latents, c.num_heads, c.mlp_dim, c.perceiver_bands,
          tuple((m, c.raw_dim(m)) for m in sorted(self.modalities)), c.vision_patch,
          c.audio_patch, c.text_vocab_size, c.perceiver_max_freq, c.perceiver_freq_base,
          c.attention_impl, c.dtype, c.param_dtype)
      families = set()
    if "vision" in families:
      embedders["vision"] = VisionEmbedder(c.width, c.vision_patch, c.vision_base_grid,
                                           dtype=c.dtype, param_dtype=c.param_dtype)
    if "audio" in families:
      embedders["audio"] = AudioEmbedder(c.width, c.audio_patch, c.audio_base_grid,
                                         dtype=c.dtype, param_dtype=c.param_dtype)
    if "text" in families:
      embedders["text"] = TextEmbedder(c.width, c.text_vocab_size, c.text_max_length,
                                       dtype=c.dtype, param_dtype=c.param_dtype)
    self.embedders = embedders
    self.encoder = Encoder(c.width, c.depth, c.num_heads, c.mlp_dim, c.scan_layers,
                           c.remat_policy, c.moe, c.layer_scale, c.stochastic_depth,
                           c.attention_impl, c.dtype, c.param_dtype, c.scan_unroll)
    if c.moe.num_experts and not c.moe.data_dependent:
      self.condition = StaticCondition(c.moe.condition, c.moe.condition_dim or c.width,
                                       num_tasks=self.num_tasks)
    # Zero-initialised heads start at uniform predictions (as big_vision does).
    if c.heads.batch_norm:
      self.classifiers = {name: ClassifierHead(classes, c.heads.momentum, c.heads.epsilon,
                                               c.dtype, c.param_dtype)
                          for name, classes in self.heads}
    else:
      self.classifiers = {
          name: nn.Dense(classes, kernel_init=logical.zeros("embed", "classes"),
                         bias_init=logical.zeros("classes"), dtype=c.dtype,
                         param_dtype=c.param_dtype)
          for name, classes in self.heads}
    self.projections = {
        m: nn.Dense(c.embed_dim, kernel_init=logical.kernel("embed", "common"),
                    bias_init=logical.zeros("common"), dtype=c.dtype, param_dtype=c.param_dtype)
        for m in self.modalities}
    self.log_logit_scale = self.param(
        "log_logit_scale", nn.initializers.constant(math.log(c.logit_scale_init)), ())

  def condition_of(self, request: Request, modality: str) -> TokenCondition:
    """Task id and attributes of `modality`'s tokens under `request`: its route, else task 0
    and the attributes of the request's own roles (the model never looks a task up)."""
    for routed, task_id, attributes in request.routes:
      if routed == modality:
        return TokenCondition(modality, task_id, tuple(attributes))
    inputs, targets = roles_of(request.classify, request.embed, request.features,
                               request.fuse if request.classify else ())
    return TokenCondition(modality, 0, token_attributes(inputs, targets, modality))

  def _tokens(self, modality: str, x: Array, train: bool,
              drop_token: float) -> tuple[Array, Array]:
    """One modality's tokens before the encoder: ([B, N, D], mask bool [B, N])."""
    if modality not in self.modalities:
      raise ValueError(f"model has no {modality!r} embedder; modalities: {self.modalities}.")
    if self.config.front_end == "perceiver":
      if train and drop_token > 0.0 and modality != "text":
        raise ValueError("DropToken is not supported with model.front_end='perceiver': the "
                         "front end already maps every input to a fixed number of latents.")
      return self.front(modality, x)
    tokens = self.embedders[EMBEDDER_OF[modality]](x)
    if modality == "text":
      mask = x != 0  # id 0 is padding
    else:
      mask = jnp.ones(tokens.shape[:2], bool)
      # DropToken applies to the long perceptual sequences, never to short discrete text.
      if train and drop_token > 0.0:
        tokens, mask = drop_tokens(tokens, mask, drop_token, self.make_rng("droptoken"))
    return tokens, mask

  def _encode(self, parts: Sequence[tuple[str, Array, Array]], request: Request,
              train: bool) -> tuple[Array, Array]:
    """Concatenates (modality, tokens [B, Ni, D], mask [B, Ni]) parts on the sequence axis
    and runs the shared encoder -> (tokens [B, sum Ni, D], mask [B, sum Ni]).

    MoE routing metrics (each [moe_layers, ...]) are sown as intermediates
    "moe_<modality>" ("moe_<m1>+<m2>" for a fused sequence).
    """
    tokens = jnp.concatenate([t for _, t, _ in parts], axis=1)
    mask = jnp.concatenate([m for _, _, m in parts], axis=1)
    chex.assert_rank(tokens, 3)
    chex.assert_shape(mask, tokens.shape[:2])
    condition = None
    if hasattr(self, "condition"):
      per_token = [self.condition_of(request, m).arrays(t.shape[1]) for m, t, _ in parts]
      ids, tasks, attrs = (np.concatenate(a) for a in zip(*per_token, strict=True))
      condition = self.condition(jnp.asarray(ids), jnp.asarray(tasks), jnp.asarray(attrs))
      condition = jnp.broadcast_to(condition[None], (tokens.shape[0], *condition.shape))
    segments = None
    if self.config.moe.num_experts:  # each token's modality id, for per-modality router losses
      ids = np.concatenate([np.full((t.shape[1],), modality_id(m), np.int32) for m, t, _ in parts])
      segments = jnp.broadcast_to(jnp.asarray(ids)[None], mask.shape)
    if request.merge_experts and len(parts) > 1:
      raise ValueError(f"merge_experts: the fused pass of {'+'.join(m for m, _, _ in parts)} "
                       "mixes conditions, and merged experts serve one condition per pass.")
    tokens, moe_metrics = self.encoder(tokens, mask, train=train, condition=condition,
                                       segments=segments, merge_experts=request.merge_experts)
    if moe_metrics:
      self.sow("intermediates", "moe_" + "+".join(m for m, _, _ in parts), moe_metrics)
    return tokens, mask

  def encode(self, modality: str, x: Array, *, train: bool = False, drop_token: float = 0.0,
             request: Request | None = None) -> tuple[Array, Array]:
    """One modality through its embedder (or the perceiver front end) and the shared encoder.

    Returns (tokens [B, N, D], mask bool [B, N]); N shrinks under DropToken.
    """
    tokens, mask = self._tokens(modality, x, train, drop_token)
    return self._encode([(modality, tokens, mask)], request or Request(features=(modality,)),
                        train)

  def __call__(self, inputs: Mapping[str, Array], request: Request, *, train: bool = False,
               drop_token: float = 0.0) -> dict[str, Array]:
    for modality in request.modalities + request.fuse:
      if modality not in inputs:
        raise ValueError(f"request needs input {modality!r}; batch has {sorted(inputs)}.")
    fusing = bool(request.classify) and len(request.fuse) > 1
    alone = (tuple(dict.fromkeys(request.embed + request.features)) if fusing
             else request.modalities)
    pooled = {}
    for modality in alone:
      tokens, mask = self.encode(modality, inputs[modality], train=train,
                                 drop_token=drop_token, request=request)
      pooled[modality] = masked_mean(tokens, mask)
    fused = None
    if fusing:
      parts = [(m, *self._tokens(m, inputs[m], train, drop_token)) for m in request.fuse]
      fused = masked_mean(*self._encode(parts, request, train))
    out = {}
    for modality, head in request.classify:
      if head not in self.classifiers:
        raise ValueError(f"no classifier head {head!r}; heads: {sorted(self.classifiers)}.")
      out[f"logits/{head}"] = self.classify(head, pooled[modality] if fused is None else fused,
                                            train)
    for modality in request.embed:
      z = self.projections[modality](pooled[modality]).astype(jnp.float32)
      out[f"embedding/{modality}"] = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-6)
    for modality in request.features:
      out[f"features/{modality}"] = pooled[modality]
    if request.embed:
      out["logit_scale"] = jnp.exp(
          jnp.minimum(self.log_logit_scale, math.log(self.config.logit_scale_max)))
    return out

  def classify(self, head: str, pooled: Array, train: bool) -> Array:
    """Classifier `head` on pooled features [B, D] -> logits [B, C] (BatchNorm heads use the
    batch's statistics in training and the running ones otherwise)."""
    if self.config.heads.batch_norm:
      return self.classifiers[head](pooled, train=train).astype(jnp.float32)
    return self.classifiers[head](pooled).astype(jnp.float32)

  def init_request(self) -> Request:
    """A request that touches every parameter, for initialisation."""
    image_like = [m for m in self.modalities if m != "text"]
    first = image_like[0] if image_like else self.modalities[0]
    return Request(classify=tuple((first, h) for h, _ in self.heads),
                   embed=tuple(self.modalities))

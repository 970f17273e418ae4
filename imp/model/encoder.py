"""The shared, modality-agnostic Transformer encoder (IMP §3.3) and DropToken.

Pre-LayerNorm blocks; `nn.scan` rolls the layers into one compiled body (IMP §3.1.1: 15-30x
faster compiles) and `nn.remat` rematerialises activations by a named policy. Activations
that policies may save are tagged with `checkpoint_name`.

Two residual-branch options, both off by default (Uni-Perceiver-MoE appendix §1 uses both):
  LayerScale (CaiT, Touvron et al. 2021): x + diag(gamma) f(x), gamma a learned per-channel
    vector initialised to `model.layer_scale` (Uni-Perceiver-MoE: 1e-3);
  stochastic depth (Huang et al. 2016; DeiT's uniform rate): in training each example's
    branch is dropped with probability `model.stochastic_depth` and otherwise scaled by
    1 / (1 - rate), so its expectation is unchanged; evaluation keeps every branch. The masks
    come from the rng stream "stochastic_depth", split per layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from imp.model import logical
from imp.model.attention import attend
from imp.model.attention_moe import ATTENTION_ROUTERS, MoeSelfAttention
from imp.model.conditions import GateInput, get_condition
from imp.model.expert_merge import merge_block
from imp.model.layer_stack import REMAT_POLICIES, resolve_scan_unroll
from imp.model.moe import ROUTERS, MoeMlp, router_setting

Array = jax.Array

def drop_path(x: Array, rate: float, rng: Array) -> Array:
  """Stochastic depth on a residual branch x [B, ...]: each example's branch is zeroed with
  probability `rate` (static, in [0, 1)) and otherwise scaled by 1 / (1 - rate)."""
  if rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)


def check_residual_options(layer_scale: float | None, stochastic_depth: float) -> None:
  """Raises a message naming the config key for a bad LayerScale init or drop rate."""
  if layer_scale is not None and (isinstance(layer_scale, bool)
                                  or not isinstance(layer_scale, int | float)
                                  or not layer_scale > 0):
    raise ValueError(f"model.layer_scale={layer_scale!r} must be None (off) or a number > 0 "
                     "(the initial gamma; Uni-Perceiver-MoE: 1e-3).")
  if isinstance(stochastic_depth, bool) or not isinstance(stochastic_depth, int | float) or \
      not 0.0 <= stochastic_depth < 1.0:
    raise ValueError(f"model.stochastic_depth={stochastic_depth!r} must be a drop rate in "
                     "[0, 1).")


def drop_tokens(tokens: Array, mask: Array, rate: float, rng: Array) -> tuple[Array, Array]:
  """DropToken (VATT): keeps a random subset of round(N * (1 - rate)) tokens per example.

  Args:
    tokens: [B, N, D].
    mask: bool [B, N], True for real tokens.
    rate: static fraction to drop, in [0, 1).
    rng: PRNG key.

  Returns:
    ([B, K, D], bool [B, K]) with K = max(1, round(N * (1 - rate))), kept tokens in their
    original order.
  """
  b, n, _ = tokens.shape
  keep = max(1, int(round(n * (1.0 - rate))))
  if keep == n:
    return tokens, mask
  noise = jax.random.uniform(rng, (b, n))
  index = jnp.sort(jnp.argsort(noise, axis=1)[:, :keep], axis=1)
  return (jnp.take_along_axis(tokens, index[..., None], axis=1),
          jnp.take_along_axis(mask, index, axis=1))


class SelfAttention(nn.Module):
  """Multi-head self-attention over [B, N, D] with a key mask bool [B, N]."""

  width: int
  num_heads: int
  attention_impl: str = "xla"
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    if self.width % self.num_heads:
      raise ValueError(
          f"model.width={self.width} is not divisible by model.num_heads={self.num_heads}.")
    head_dim = self.width // self.num_heads
    proj = lambda name: nn.DenseGeneral(  # noqa: E731
        (self.num_heads, head_dim), kernel_init=logical.kernel("embed", "heads", "kv"),
        bias_init=logical.zeros("heads", "kv"), dtype=self.dtype, param_dtype=self.param_dtype,
        name=name)
    q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)  # [B, N, heads, head_dim]
    out = attend(q, k, v, mask, impl=self.attention_impl)  # [B, N, heads, head_dim]
    return nn.DenseGeneral(self.width, axis=(-2, -1), kernel_init=logical.kernel(
        "heads", "kv", "embed"), bias_init=logical.zeros("embed"), dtype=self.dtype,
        param_dtype=self.param_dtype, name="out")(out)


class Mlp(nn.Module):
  """Position-wise feed-forward: [B, N, D] -> [B, N, mlp_dim] -> [B, N, D]."""

  width: int
  mlp_dim: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.Dense(self.mlp_dim, kernel_init=logical.kernel("embed", "mlp"),
                 bias_init=logical.zeros("mlp"), dtype=self.dtype, param_dtype=self.param_dtype,
                 name="wi")(x)
    h = nn.gelu(h)
    return nn.Dense(self.width, kernel_init=logical.kernel("mlp", "embed"),
                    bias_init=logical.zeros("embed"), dtype=self.dtype,
                    param_dtype=self.param_dtype, name="wo")(h)


@dataclasses.dataclass(frozen=True)
class MoeConfig:
  """Where and how the encoder uses Mixture-of-Experts FFNs (config key `model.moe`).

  Attributes:
    num_experts: experts per MoE layer; 0 means a dense encoder.
    every: the last layer of every block of `every` layers is MoE, the others dense
      (V-MoE/LIMoE use every=2); depth must be a multiple of it.
    router: a key of imp.model.moe.ROUTERS ("expert_choice" as IMP, or "top_k").
    router_args: keyword arguments of the router (capacity factors, k, noise, loss weights;
      an open section: the router checks them).
    hidden_dim: expert hidden width (default: model.mlp_dim, so expert choice at capacity
      factor 1.0 costs the FLOPs of the dense FFN).
    group_size: "example", "batch" or a number of tokens per routing group.
    dispatch: "gather" (fast on one device) or "einsum" (lowers to all-to-all on a mesh).
    condition: the router input R(x), a key of imp.model.conditions.CONDITIONS (token,
      context, modality, task, attribute; Uni-Perceiver-MoE eq. 5-9).
    condition_dim: width of the data-independent condition embeddings (default: model width).
    ffn: MoE layers have expert FFNs (False: only their attention is MoE).
    attention: "none", "shared" (one router for Q/K/V/output, Uni-Perceiver-MoE) or "qkv"
      (separate Q, K and V routers, M3SAT): linear-projection experts in attention.
    renormalize_gates: token choice (router="top_k") renormalises a token's k gates over its
      choices (GShard; the default). False combines with the softmax values as they are
      (Uni-Perceiver-MoE eq. 3, M3SAT eq. 2). Expert choice ignores it.
  """

  num_experts: int = 0
  every: int = 1
  router: str = "expert_choice"
  router_args: tuple[tuple[str, Any], ...] = ()
  hidden_dim: int | None = None
  group_size: str | int = "example"
  dispatch: str = "gather"
  condition: str = "token"
  condition_dim: int | None = None
  ffn: bool = True
  attention: str = "none"
  renormalize_gates: bool = True

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | None) -> MoeConfig:
    cfg = dict(cfg or {})
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(cfg) - set(fields))
    if unknown:
      raise ValueError(f"model.moe.{unknown[0]} is not an MoE setting; valid: {', '.join(fields)}.")
    if "router_args" in cfg:
      cfg["router_args"] = tuple(sorted(dict(cfg["router_args"]).items()))
    moe = cls(**cfg)
    if not isinstance(moe.renormalize_gates, bool):
      raise ValueError(f"model.moe.renormalize_gates={moe.renormalize_gates!r} must be True or "
                       "False.")
    if "normalize" in dict(moe.router_args):
      raise ValueError("model.moe.router_args.normalize: set model.moe.renormalize_gates "
                       "instead.")
    if moe.num_experts and moe.router not in ROUTERS:
      raise ValueError(f"model.moe.router={moe.router!r} is not known; valid: "
                       f"{', '.join(sorted(ROUTERS))}.")
    condition = get_condition(moe.condition)
    if moe.attention not in ("none", *ATTENTION_ROUTERS):
      raise ValueError(f"model.moe.attention={moe.attention!r} is not known; valid: 'none', "
                       f"{', '.join(repr(r) for r in ATTENTION_ROUTERS)}.")
    if moe.num_experts and not moe.ffn and moe.attention == "none":
      raise ValueError("model.moe.ffn=False with model.moe.attention='none' leaves no experts; "
                       "set ffn=True or attention='shared'/'qkv'.")
    if moe.num_experts and not condition.data_dependent and moe.router != "top_k":
      raise ValueError(f"model.moe.condition={moe.condition!r} gives every token of a condition "
                       f"the same router scores, so it needs router='top_k' (token choice), "
                       f"not {moe.router!r}.")
    return moe

  @property
  def data_dependent(self) -> bool:
    return get_condition(self.condition).data_dependent

  @property
  def layer_router_args(self) -> tuple[tuple[str, Any], ...]:
    """Router arguments as a layer uses them.

    `renormalize_gates=False` becomes the top-k router's `normalize=False`. Under a
    data-independent condition every token of a condition asks for the same k
    experts, so the capacity must hold all S tokens of a group or most would be dropped;
    the capacity factor becomes E / k (capacity_for then gives C = S), in training and eval.
    """
    args = dict(self.router_args)
    if self.router == "top_k" and not self.renormalize_gates:
      args["normalize"] = False
    if not self.data_dependent:
      factor = self.num_experts / int(router_setting(self.router, args, "k"))
      args.update(capacity_factor_train=factor, capacity_factor_eval=factor)
    return tuple(sorted(args.items()))


class EncoderBlock(nn.Module):
  """Pre-LN Transformer block: (x [B, N, D], mask [B, N], condition [B, N, Dc] or None,
  segments int [B, N] or None) -> (x, MoE metrics or None).

  With `moe` set, the FFN (moe.ffn) and/or the attention projections (moe.attention) are
  Mixture-of-Experts layers routed by R(x) of `moe.condition`; `condition` carries the
  data-independent condition embeddings and `segments` each token's modality id (for the
  routers' per-modality losses). Tokens no FFN expert picks pass through the residual. With
  `merge`, those layers run as dense layers whose weights are the experts merged for the
  pass's condition (Uni-Perceiver-MoE §3.3): the same parameters, no router or dispatch.
  """

  width: int
  num_heads: int
  mlp_dim: int
  moe: MoeConfig | None = None
  train: bool = False
  layer_scale: float | None = None
  stochastic_depth: float = 0.0
  attention_impl: str = "xla"
  dtype: str = "float32"
  param_dtype: str = "float32"
  merge: bool = False  # run the MoE layers as their experts merged for the condition

  def _residual(self, y: Array, name: str) -> Array:
    """A residual branch's output [B, N, D] after LayerScale and stochastic depth."""
    if self.layer_scale is not None:
      gamma = self.param(name + "_scale", nn.with_logical_partitioning(
          nn.initializers.constant(self.layer_scale), ("embed",)), (y.shape[-1],),
          self.param_dtype)
      y = y * gamma.astype(y.dtype)
    if self.train and self.stochastic_depth > 0.0:
      if not self.has_rng("stochastic_depth"):
        raise ValueError("model.stochastic_depth > 0 needs the rng stream 'stochastic_depth' "
                         "in training; this forward pass does not pass one.")
      y = drop_path(y, self.stochastic_depth, self.make_rng("stochastic_depth"))
    return y

  def _merged(self, params: Any, condition: Array | None) -> tuple[dict | None, dict | None]:
    """(SelfAttention, Mlp) parameters of this block's experts merged for the pass's
    condition (`expert_merge.merge_block`); row 0 of `condition` [B, N, Dc] stands for all."""
    moe = self.moe
    if moe.data_dependent or condition is None:
      raise ValueError(f"merge_experts needs a data-independent model.moe.condition (modality, "
                       f"task or attribute): with {moe.condition!r} each token picks its own "
                       "experts, so they cannot be merged.")
    args = dict(moe.layer_router_args)
    return merge_block(nn.meta.unbox(params), condition[0, 0],
                       int(router_setting(moe.router, args, "k")), self.num_heads,
                       bool(router_setting(moe.router, args, "normalize")),
                       attention=moe.attention != "none", ffn=moe.ffn)

  @nn.compact
  def __call__(self, x: Array, mask: Array, condition: Array | None = None,
               segments: Array | None = None) -> tuple[Array, dict | None]:
    moe = self.moe
    metrics = None
    merged_attn = merged_mlp = None
    if moe is not None and self.merge:
      merged_attn, merged_mlp = self._merged(self.variables["params"], condition)
      metrics = {"aux_loss": jnp.zeros((), jnp.float32)}  # no router runs
    h = logical.layer_norm("ln_attn", self.dtype, self.param_dtype)(x)
    if merged_attn is not None:
      y = SelfAttention(self.width, self.num_heads, self.attention_impl, dtype=self.dtype,
                        param_dtype=self.param_dtype, parent=None).apply(
                            {"params": merged_attn}, h, mask)
    elif moe is not None and moe.attention != "none":
      gate = GateInput(moe.condition, self.attention_impl, self.param_dtype,
                       name="attn_gate")(h, mask, condition)
      y, metrics = MoeSelfAttention(
          self.width, self.num_heads, moe.num_experts, routers=moe.attention,
          router=moe.router, router_kwargs=moe.layer_router_args, group_size=moe.group_size,
          dispatch=moe.dispatch, attention_impl=self.attention_impl, dtype=self.dtype,
          param_dtype=self.param_dtype, name="attn")(h, mask, gate, train=self.train)
    else:
      y = SelfAttention(self.width, self.num_heads, self.attention_impl, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="attn")(h, mask)
    x = x + checkpoint_name(self._residual(y, "attn"), "attn_out")
    h = logical.layer_norm("ln_mlp", self.dtype, self.param_dtype)(x)
    if merged_mlp is not None:
      y = Mlp(self.width, merged_mlp["wi"]["kernel"].shape[-1], dtype=self.dtype,
              param_dtype=self.param_dtype, parent=None).apply({"params": merged_mlp}, h)
    elif moe is None or not moe.ffn:
      y = Mlp(self.width, self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
              name="mlp")(h)
    else:
      gate = GateInput(moe.condition, self.attention_impl, self.param_dtype,
                       name="gate")(h, mask, condition)
      y, ffn_metrics = MoeMlp(
          num_experts=moe.num_experts, hidden_dim=moe.hidden_dim or self.mlp_dim,
          router=moe.router, router_kwargs=moe.layer_router_args,
          group_size=moe.group_size, dispatch=moe.dispatch, param_dtype=self.param_dtype,
          name="moe",
      )(h, mask, gate_input=gate, train=self.train, segments=segments)
      if metrics is not None:
        ffn_metrics = dict(ffn_metrics, **{k: v for k, v in metrics.items() if k != "aux_loss"},
                           aux_loss=ffn_metrics["aux_loss"] + metrics["aux_loss"])
      metrics = ffn_metrics
    x = x + checkpoint_name(self._residual(y, "mlp"), "mlp_out")
    return x, metrics


def layers_per_unit(moe: MoeConfig | None) -> int:
  """Layers in the unit `nn.scan` repeats: `moe.every` in an MoE encoder, else 1."""
  return moe.every if moe is not None and moe.num_experts else 1


class BlockGroup(nn.Module):
  """`every` blocks, the last with an MoE FFN: the unit `nn.scan` repeats in an MoE encoder."""

  width: int
  num_heads: int
  mlp_dim: int
  moe: MoeConfig
  train: bool = False
  layer_scale: float | None = None
  stochastic_depth: float = 0.0
  attention_impl: str = "xla"
  dtype: str = "float32"
  param_dtype: str = "float32"
  merge: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Array, condition: Array | None = None,
               segments: Array | None = None) -> tuple[Array, dict]:
    residual = dict(train=self.train, layer_scale=self.layer_scale,
                    stochastic_depth=self.stochastic_depth, attention_impl=self.attention_impl,
                    dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.moe.every - 1):
      x, _ = EncoderBlock(self.width, self.num_heads, self.mlp_dim, **residual,
                          name=f"dense_{i}")(x, mask)
    return EncoderBlock(self.width, self.num_heads, self.mlp_dim, moe=self.moe, **residual,
                        merge=self.merge, name="moe_block")(x, mask, condition, segments)


class Encoder(nn.Module):
  """Stack of `depth` blocks plus a final LayerNorm.

  (tokens [B, N, D], mask bool [B, N], condition [B, N, Dc] or None, segments int [B, N] or
  None) -> (tokens [B, N, D], MoE metrics), where each MoE metric has a leading [moe_layers]
  axis (empty dict for a dense encoder). `condition` is the data-independent routing condition
  (imp.model.conditions), `segments` each token's modality id. `merge_experts` runs every MoE
  layer with its experts merged for the condition (one condition for the whole pass; the
  metrics are then only a zero `aux_loss`).

  Attributes:
    scan_layers: roll the layers with `nn.scan` (parameters get a leading `layers` axis; with
      MoE every `moe.every` layers form the scanned unit).
    remat_policy: a key of REMAT_POLICIES.
    scan_unroll: scanned units per iteration of the compiled loop (`nn.scan`'s unroll; the
      parameters keep their stacked [layers, ...] layout whatever it is): 1 compiles fastest,
      more trade compile time for step time (docs/benchmarks.md, scan_layers); "auto": see
      resolve_scan_unroll.
    moe: MoE placement and routing; None or num_experts=0 for a dense encoder.
    layer_scale: LayerScale's initial gamma, or None (off); see the module docstring.
    stochastic_depth: the uniform drop rate of every block's residual branches (0: off).
    attention_impl: a key of imp.model.attention.ATTENTION_IMPLS (`model.attention_impl`).
    dtype, param_dtype: computation and parameter dtypes (`model.dtype`, `model.param_dtype`);
      LayerNorm statistics and the softmax stay float32, the routers compute in float32.
  """

  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  scan_layers: bool = True
  remat_policy: str = "none"
  moe: MoeConfig | None = None
  layer_scale: float | None = None
  stochastic_depth: float = 0.0
  attention_impl: str = "xla"
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_unroll: int | str = "auto"

  @nn.compact
  def __call__(self, x: Array, mask: Array, *, train: bool = False,
               condition: Array | None = None, segments: Array | None = None,
               merge_experts: bool = False) -> tuple[Array, dict]:
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"model.remat_policy={self.remat_policy!r} is not known; valid: "
                       f"auto, {', '.join(REMAT_POLICIES)}.")
    moe = self.moe if self.moe is not None and self.moe.num_experts else None
    if moe is not None and (moe.every < 1 or self.depth % moe.every):
      raise ValueError(f"model.depth={self.depth} must be a multiple of "
                       f"model.moe.every={moe.every}.")
    check_residual_options(self.layer_scale, self.stochastic_depth)
    unit = EncoderBlock if moe is None else BlockGroup
    kwargs = {"train": train, "layer_scale": self.layer_scale,
              "stochastic_depth": self.stochastic_depth, "attention_impl": self.attention_impl,
              "dtype": self.dtype, "param_dtype": self.param_dtype}
    if moe is not None:
      kwargs.update(moe=moe, merge=merge_experts)
    length = self.depth // layers_per_unit(moe)
    unroll = min(resolve_scan_unroll(self.scan_unroll, length), length)
    if self.remat_policy != "none":
      # A scan loop keeps the recomputation apart from the forward pass, so CSE cannot merge
      # them; XLA inlines a loop of one iteration (unroll = length), which then needs the
      # barrier as unrolled layers do (measured: no memory saved without it).
      unit = nn.remat(unit, policy=REMAT_POLICIES[self.remat_policy],
                      prevent_cse=not self.scan_layers or unroll == length)
    args = (self.width, self.num_heads, self.mlp_dim)
    x = x.astype(self.dtype)
    if self.scan_layers:
      layers = nn.scan(
          unit, variable_axes={"params": 0},
          split_rngs={"params": True, "router": True, "stochastic_depth": True},
          in_axes=nn.broadcast, length=length, unroll=unroll,
          metadata_params={nn.PARTITION_NAME: "layers"})
      x, metrics = layers(*args, **kwargs, name="layers")(x, mask, condition, segments)
    else:
      per_layer = []
      for i in range(length):
        x, m = unit(*args, **kwargs, name=f"layer_{i}")(x, mask, condition, segments)
        per_layer.append(m)
      metrics = None if moe is None else jax.tree.map(lambda *m: jnp.stack(m), *per_layer)
    return logical.layer_norm("ln_final", self.dtype, self.param_dtype)(x), metrics or {}

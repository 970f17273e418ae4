"""Inference merge of data-independent conditional MoEs (Uni-Perceiver-MoE §3.3).

Under a modality, task or attribute condition every token with the same condition c gets the
same top-k experts and gates G(c) = topk(softmax(W_g c)) (no noise at inference). A layer's
output for those tokens is then sum_e G_e(c) f_e(x), which reparameterises into ONE dense
layer per condition:

  linear experts (attention projections):  W(c) = sum_e G_e W_e,  b(c) = sum_e G_e b_e
      -> exactly the cost of the dense projection;
  MLP experts (FFN):  sum_e G_e W2_e gelu(W1_e x + b1_e) + G_e b2_e is a dense MLP whose hidden
      layer concatenates the k chosen experts' hidden layers, with W2 rows scaled by G_e
      -> hidden width k * H: the dense model's cost for k = 1, and the k routed experts'
      FLOPs for k > 1, without any routing, dispatch or unused expert in memory.

The merged parameters have the layout of the dense modules `imp.model.encoder.Mlp` and
`imp.model.encoder.SelfAttention`, so those modules run them as they are. Merging assumes no
capacity drops, which holds because data-independent layers get capacity S
(`MoeConfig.layer_router_args`).

Shapes: E experts, K chosen experts, Dc condition width, D width, H expert hidden width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from imp.model.moe import top_k_gates

Array = jax.Array
Params = Mapping[str, Any]


def condition_gates(gate_kernel: Array, condition: Array, k: int,
                    normalize: bool = True) -> tuple[Array, Array]:
  """The experts and gates of one condition: kernel [Dc, E], c [Dc] -> (int [K], float [K]).

  Same arithmetic as the router (float32 logits, softmax, `top_k_gates`).
  """
  logits = condition.astype(jnp.float32) @ gate_kernel.astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  gates, experts = top_k_gates(probs[None, None], k, normalize)
  return experts[0, 0], gates[0, 0]


def merge_linear(kernel: Array, bias: Array, experts: Array, gates: Array) -> tuple[Array, Array]:
  """sum_k gates[k] * (kernel, bias)[experts[k]]: [E, D, O], [E, O] -> [D, O], [O]."""
  w = jnp.einsum("k,kdo->do", gates, kernel[experts].astype(jnp.float32))
  b = jnp.einsum("k,ko->o", gates, bias[experts].astype(jnp.float32))
  return w, b


def merge_mlp(experts_params: Params, experts: Array, gates: Array) -> dict[str, Any]:
  """`moe.Experts` parameters -> `encoder.Mlp` parameters with hidden width K * H."""
  wi, bi = experts_params["wi"][experts], experts_params["wi_bias"][experts]  # [K, D, H]
  wo, bo = experts_params["wo"][experts], experts_params["wo_bias"][experts]  # [K, H, D]
  k, d, h = wi.shape
  return {
      "wi": {"kernel": wi.transpose(1, 0, 2).reshape(d, k * h), "bias": bi.reshape(k * h)},
      "wo": {"kernel": (gates[:, None, None] * wo).reshape(k * h, d),
             "bias": jnp.einsum("k,kd->d", gates, bo)},
  }


def merge_moe_mlp(layer_params: Params, condition: Array, k: int,
                  normalize: bool = True) -> dict[str, Any]:
  """A `MoeMlp`'s parameters and one condition vector [Dc] -> `Mlp` parameters."""
  experts, gates = condition_gates(layer_params["router"]["gate"]["kernel"], condition, k,
                                   normalize)
  return merge_mlp(layer_params["experts"], experts, gates)


def merge_moe_attention(attn_params: Params, condition: Array, k: int, num_heads: int,
                        normalize: bool = True) -> dict[str, Any]:
  """A `MoeSelfAttention`'s parameters and one condition [Dc] -> `SelfAttention` parameters.

  "shared" routing (one router) merges query, key, value and output; "qkv" routing merges
  each projection by its own router and keeps the dense output projection.
  """
  shared = "router" in attn_params
  merged = {}
  for p, name in zip("qkvo", ("query", "key", "value", "out"), strict=True):
    if name == "out" and not shared:  # a dense [D, D] projection, as SelfAttention's
      kernel = attn_params["out"]["kernel"]
      merged["out"] = {"kernel": kernel.reshape(num_heads, kernel.shape[0] // num_heads, -1),
                       "bias": attn_params["out"]["bias"]}
      continue
    router = attn_params["router" if shared else f"router_{p}"]
    experts, gates = condition_gates(router["gate"]["kernel"], condition, k, normalize)
    w, b = merge_linear(attn_params[name]["kernel"], attn_params[name]["bias"], experts, gates)
    d, o = w.shape
    if name == "out":  # SelfAttention's out is DenseGeneral over (heads, head_dim)
      merged[name] = {"kernel": w.reshape(num_heads, d // num_heads, o), "bias": b}
    else:
      merged[name] = {"kernel": w.reshape(d, num_heads, o // num_heads),
                      "bias": b.reshape(num_heads, o // num_heads)}
  return merged


def merge_block(block_params: Params, condition: Array, k: int, num_heads: int,
                normalize: bool = True, *, attention: bool, ffn: bool,
                ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
  """An MoE `EncoderBlock`'s parameters and the condition [Dc] of its tokens ->
  (`SelfAttention` parameters of its attention experts, `Mlp` parameters of its FFN experts),
  None for a part without experts.

  Every token of an encoder pass has the same data-independent condition, so the router picks
  the same k experts with the same gates for all of them, and the block equals the dense one.
  """
  attn = (merge_moe_attention(block_params["attn"], condition, k, num_heads, normalize)
          if attention else None)
  mlp = merge_moe_mlp(block_params["moe"], condition, k, normalize) if ffn else None
  return attn, mlp

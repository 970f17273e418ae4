"""Mixture-of-Experts in the attention projections (Uni-Perceiver-MoE §3.2; M3SAT §3.2).

Each expert is one linear projection [D, Dout] (M3SAT: "the expert of the Self-attention MoE is
composed of a single linear layer"). Two router layouts:

  "shared": one router picks the experts of the query, key, value AND output projections of a
            token (Uni-Perceiver-MoE replaces every linear projection with a Conditional-MoE
            layer, routed by the token's condition);
  "qkv":    three independent routers for query, key and value (M3SAT); the output
            projection stays dense.

The path is the one of `imp.model.moe`: router -> `Routing` (dispatch/combine) -> batched
experts. A token no expert picked gets a zero projection (token-choice capacity drops).

Shape glossary as in imp/model/moe.py (G, S, E, C, D, Dg); Dout the projection width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imp.model import logical
from imp.model.attention import attend
from imp.model.moe import ROUTERS, Metrics, Routing, _expert_kernel, _group

Array = jax.Array

ATTENTION_ROUTERS = ("shared", "qkv")


class LinearExperts(nn.Module):
  """E linear maps in one batched computation: [G, E, C, D] -> [G, E, C, Dout]."""

  num_experts: int
  out_dim: int
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    g, e, c, d = x.shape
    if e != self.num_experts:
      raise ValueError(f"LinearExperts expects [G, {self.num_experts}, C, D]; got {x.shape}.")
    w = self.param("kernel", _expert_kernel("expert", "embed", "mlp"), (e, d, self.out_dim),
                   self.param_dtype)
    b = self.param("bias", logical.zeros("expert", "mlp"), (e, self.out_dim), self.param_dtype)
    x = x.transpose(1, 0, 2, 3).reshape(e, g * c, d)  # expert axis first, as moe.Experts
    out = jnp.einsum("EXD,EDO->EXO", x, w.astype(x.dtype)) + b[:, None].astype(x.dtype)
    return out.reshape(e, g, c, self.out_dim).transpose(1, 0, 2, 3)


def routed_linear(routing: Routing, experts: nn.Module, x: Array, dispatch: str) -> Array:
  """dispatch -> linear experts -> combine: x [G, S, D] -> [G, S, Dout]."""
  gather = dispatch == "gather"
  buffers = routing.dispatch(x) if gather else routing.dispatch_einsum(x)  # [G, E, C, D]
  y = experts(buffers)
  return routing.combine(y) if gather else routing.combine_einsum(y)


def prefixed(prefix: str, metrics: Mapping[str, Array]) -> Metrics:
  return {f"{prefix}{k}": v for k, v in metrics.items()}


class MoeSelfAttention(nn.Module):
  """Multi-head self-attention whose projections are linear experts.

  (x [B, N, D], mask bool [B, N], gate_input [B, N, Dg]) -> ([B, N, D], metrics). Metric keys
  are "attn_<name>" ("shared") or "attn_q_<name>", "attn_k_<name>", "attn_v_<name>" ("qkv"),
  plus "aux_loss", the sum of the routers' auxiliary losses.
  """

  width: int
  num_heads: int
  num_experts: int
  routers: str = "shared"
  router: str = "top_k"
  router_kwargs: Mapping[str, Any] | tuple[tuple[str, Any], ...] = ()
  group_size: str | int = "example"
  dispatch: str = "gather"
  attention_impl: str = "xla"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def _route(self, name: str, gate: Array, mask: Array, train: bool) -> tuple[Routing, Metrics]:
    router = ROUTERS[self.router](self.num_experts, **dict(self.router_kwargs), name=name)
    return router(_group(gate, self.group_size), train=train, valid=_group(mask, self.group_size))

  @nn.compact
  def __call__(self, x: Array, mask: Array, gate_input: Array, *,
               train: bool) -> tuple[Array, Metrics]:
    if self.routers not in ATTENTION_ROUTERS:
      raise ValueError(f"model.moe.attention={self.routers!r} is not known; valid: 'none', "
                       f"{', '.join(repr(r) for r in ATTENTION_ROUTERS)}.")
    if self.width % self.num_heads:
      raise ValueError(
          f"model.width={self.width} is not divisible by model.num_heads={self.num_heads}.")
    b, n, d = x.shape
    head_dim = d // self.num_heads
    xg = _group(x, self.group_size)
    metrics: Metrics = {}
    if self.routers == "shared":
      routing, m = self._route("router", gate_input, mask, train)
      routings = {p: routing for p in "qkvo"}
      metrics.update(prefixed("attn_", m))
    else:
      routings = {}
      for p in "qkv":
        routings[p], m = self._route(f"router_{p}", gate_input, mask, train)
        metrics.update(prefixed(f"attn_{p}_", m))
    proj = {}
    for p, name in zip("qkv", ("query", "key", "value"), strict=True):
      experts = LinearExperts(self.num_experts, d, self.param_dtype, name=name)
      out = routed_linear(routings[p], experts, xg.astype(self.dtype),
                          self.dispatch)
      proj[p] = out.reshape(b, n, self.num_heads, head_dim)
    attended = attend(proj["q"], proj["k"], proj["v"], mask,
                      impl=self.attention_impl).reshape(b, n, d)
    if "o" in routings:
      experts = LinearExperts(self.num_experts, d, self.param_dtype, name="out")
      out = routed_linear(routings["o"], experts,
                          _group(attended, self.group_size), self.dispatch).reshape(b, n, d)
    else:
      out = nn.Dense(d, kernel_init=logical.kernel("mlp", "embed"),
                     bias_init=logical.zeros("embed"), dtype=self.dtype,
                     param_dtype=self.param_dtype, name="out")(attended)
    aux = sum(v for k, v in metrics.items() if k.endswith("aux_loss"))
    metrics = {k: v for k, v in metrics.items() if not k.endswith("aux_loss")}
    metrics["aux_loss"] = jnp.asarray(aux, jnp.float32)
    return out, metrics

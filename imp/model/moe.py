"""Sparse Mixture-of-Experts MLP (IMP §3.3, §4.1): router -> dispatcher pytree -> experts.

IMP replaces the encoder's dense MLPs with MoE layers and routes with expert choice at capacity
factor 1.0, without routing noise or auxiliary losses (§4.1). Token-choice top-k routing
(Switch/GShard/V-MoE), its balancing losses and LIMoE's entropy losses are here too, for
ablations.

The layer is three separate things, as in vmoe:
  router:     gate input [G, S, Dg] -> `Routing` (the dispatcher) plus a metrics dict (here);
  dispatcher: `Routing.dispatch` [G, S, D] -> [G, E, C, D] and `Routing.combine` back
              (imp/model/routing.py, with the expert- and token-choice assignments);
  experts:    one batched MLP over [G, E, C, D] with a leading `expert` parameter axis (here).
The routers' auxiliary losses are in imp/model/moe_losses.py.

Shape glossary:
  G  groups (routing is independent per group; capacity is per expert per group)
  S  tokens per group
  E  experts
  C  capacity: slots per expert per group
  D  model width
  Dg gate-input width (the router may see something other than the tokens)
  H  expert hidden width
  K  experts per token (token-choice top-k)
  B, N  batch and tokens per example at the `MoeMlp` boundary
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imp.model import logical
from imp.model.conditions import MODALITY_IDS
from imp.model.moe_losses import (  # noqa: F401  (re-exported: the layer's public API)
    global_entropy_loss,
    importance_loss,
    load_loss,
    local_entropy_loss,
    switch_load_balance_loss,
)
from imp.model.routing import (  # noqa: F401
    Metrics,
    Routing,
    capacity_for,
    expert_choice_routing,
    routing_metrics,
    token_choice_routing,
    top_k_gates,
)

Array = jax.Array


# ------------------------------------------------------------------------------------------
# Routers.


def _gate_logits(gate_input: Array, num_experts: int) -> Array:
  """[G, S, Dg] -> float32 [G, S, E]. No bias, as V-MoE/LIMoE.

  Initialised normal(0.02), not zeros: small keeps the probabilities near uniform at the
  start, and non-zero breaks ties. With a zero kernel every probability is 1/E, so under
  expert choice every expert would pick the same lowest-index tokens and drop the rest.
  """
  return nn.Dense(num_experts, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                  kernel_init=logical.normal(0.02, "embed", "expert"),
                  name="gate")(gate_input.astype(jnp.float32))


class _EntropyLosses:
  """LIMoE's per-modality entropy losses (imp.model.moe_losses), shared by both routers.

  Attributes (on the router):
    local_entropy_weight: weight of the local entropy loss in `aux_loss`.
    global_entropy_weight: weight of the (thresholded) global entropy loss in `aux_loss`.
    global_entropy_threshold: tau of the global loss, max(0, tau - H); None: no threshold.
  With a weight set, the metrics carry the unweighted `local_entropy_loss` and
  `global_entropy_loss`.
  """

  def entropy_aux(self, probs: Array, valid: Array | None,
                  segments: Array | None) -> tuple[Array, Metrics]:
    """probs [G, S, E], valid bool [G, S], segments int [G, S] (modality ids) -> (aux, metrics)."""
    if not (self.local_entropy_weight or self.global_entropy_weight):
      return jnp.zeros((), jnp.float32), {}
    n = len(MODALITY_IDS)
    losses = {"local_entropy_loss": local_entropy_loss(probs, valid, segments, n),
              "global_entropy_loss": global_entropy_loss(
                  probs, valid, segments, n, self.global_entropy_threshold)}
    aux = (self.local_entropy_weight * losses["local_entropy_loss"]
           + self.global_entropy_weight * losses["global_entropy_loss"])
    return aux.astype(jnp.float32), losses


class ExpertChoiceRouter(_EntropyLosses, nn.Module):
  """IMP's router: softmax gate, expert choice, no auxiliary loss by default.

  Capacity factors differ between train and eval because eval batches are not balanced by
  the training signal; a larger eval factor drops fewer tokens. LIMoE's entropy losses are
  available (see `_EntropyLosses`), off by default as in IMP.
  """

  num_experts: int
  capacity_factor_train: float = 1.0
  capacity_factor_eval: float = 2.0
  local_entropy_weight: float = 0.0
  global_entropy_weight: float = 0.0
  global_entropy_threshold: float | None = None

  @nn.compact
  def __call__(self, gate_input: Array, *, train: bool, valid: Array | None = None,
               segments: Array | None = None) -> tuple[Routing, Metrics]:
    """gate_input [G, S, Dg], valid bool [G, S], segments int [G, S] -> (Routing, metrics)."""
    probs = jax.nn.softmax(_gate_logits(gate_input, self.num_experts), axis=-1)
    factor = self.capacity_factor_train if train else self.capacity_factor_eval
    capacity = capacity_for(gate_input.shape[1], self.num_experts, factor)
    routing, metrics = expert_choice_routing(probs, capacity, valid)
    aux, losses = self.entropy_aux(probs, valid, segments)
    return routing, {"aux_loss": aux, **metrics, **losses}


class TopKRouter(_EntropyLosses, nn.Module):
  """Token-choice top-k router (Switch k=1, GShard/V-MoE k=2) with optional balancing losses.

  Attributes:
    normalize: renormalise the k gates of a token over its choices (GShard); False keeps the
      softmax values (Uni-Perceiver-MoE eq. 3, M3SAT eq. 2). `model.moe.renormalize_gates`.
    batch_priority: fill expert slots in order of each token's top gate, not token order
      (batch-priority routing, V-MoE §4.1): under tight capacity the confident tokens stay.
    noise_std: std of Gaussian noise added to the logits in training (rng stream "router").
    *_loss_weight: weights of the aux losses in `aux_loss`; the metrics carry each loss
      unweighted as `switch_loss`, `importance_loss` and `load_loss`. LIMoE's entropy losses
      as `_EntropyLosses`.
  """

  num_experts: int
  k: int = 1
  capacity_factor_train: float = 1.0
  capacity_factor_eval: float = 2.0
  normalize: bool = True
  batch_priority: bool = False
  noise_std: float = 0.0
  switch_loss_weight: float = 0.0
  importance_loss_weight: float = 0.0
  load_loss_weight: float = 0.0
  local_entropy_weight: float = 0.0
  global_entropy_weight: float = 0.0
  global_entropy_threshold: float | None = None

  @nn.compact
  def __call__(self, gate_input: Array, *, train: bool, valid: Array | None = None,
               segments: Array | None = None) -> tuple[Routing, Metrics]:
    """gate_input [G, S, Dg], valid bool [G, S], segments int [G, S] -> (Routing, metrics)."""
    logits = _gate_logits(gate_input, self.num_experts)
    noise_std = self.noise_std if train else 0.0
    noisy = logits
    if noise_std > 0:
      noisy = logits + noise_std * jax.random.normal(self.make_rng("router"), logits.shape)
    probs = jax.nn.softmax(noisy, axis=-1)
    factor = self.capacity_factor_train if train else self.capacity_factor_eval
    capacity = capacity_for(gate_input.shape[1], self.num_experts, factor, self.k)
    routing, metrics = token_choice_routing(probs, self.k, capacity, valid, self.normalize,
                                            self.batch_priority)
    gates, experts = top_k_gates(probs, self.k, self.normalize)
    dense_gates = (jax.nn.one_hot(experts, self.num_experts) * gates[..., None]).sum(-2)
    losses = {
        "switch_loss": switch_load_balance_loss(probs, experts[..., 0], valid),
        "importance_loss": importance_loss(dense_gates, valid),
        "load_loss": load_loss(logits, noisy, noise_std, self.k, valid),
    }
    aux = (self.switch_loss_weight * losses["switch_loss"]
           + self.importance_loss_weight * losses["importance_loss"]
           + self.load_loss_weight * losses["load_loss"])
    entropy_aux, entropy_losses = self.entropy_aux(probs, valid, segments)
    return routing, {"aux_loss": (aux + entropy_aux).astype(jnp.float32), **metrics, **losses,
                     **entropy_losses}


ROUTERS: dict[str, type[nn.Module]] = {
    "expert_choice": ExpertChoiceRouter,
    "top_k": TopKRouter,
}


def router_setting(router: str, args: Mapping[str, Any], name: str) -> Any:
  """`args[name]` (model.moe.router_args), else router `router`'s own declared default."""
  if name in args:
    return args[name]
  return ROUTERS[router].__dataclass_fields__[name].default


# ------------------------------------------------------------------------------------------
# Experts and the layer.


def _expert_kernel(*axes: str):
  # logical.kernel's lecun_normal would count the leading expert axis into fan-in and shrink
  # every expert's weights by sqrt(E); batch_axis keeps each expert a plain Dense init.
  return nn.with_logical_partitioning(nn.initializers.lecun_normal(batch_axis=(0,)), axes)


class Experts(nn.Module):
  """E independent MLPs in one batched computation: [G, E, C, D] -> [G, E, C, D]."""

  num_experts: int
  hidden_dim: int
  width: int
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.shape[-1] != self.width or x.shape[1] != self.num_experts:
      raise ValueError(f"Experts expects [G, {self.num_experts}, C, {self.width}]; got "
                       f"{x.shape}.")
    e, d, h = self.num_experts, self.width, self.hidden_dim
    pd = self.param_dtype  # the computation follows the input's dtype
    wi = self.param("wi", _expert_kernel("expert", "embed", "mlp"), (e, d, h), pd)
    bi = self.param("wi_bias", logical.zeros("expert", "mlp"), (e, h), pd)
    wo = self.param("wo", _expert_kernel("expert", "mlp", "embed"), (e, h, d), pd)
    bo = self.param("wo_bias", logical.zeros("expert", "embed"), (e, d), pd)
    g, _, c, _ = x.shape
    # One [G*C, D] x [D, H] matmul per expert, expert axis leading: on the CPU this is ~10%
    # faster per train step than "GECD,EDH->GECH" (benchmarks/moe_vs_dense.py, E=16).
    x = x.transpose(1, 0, 2, 3).reshape(e, g * c, d)
    hidden = jnp.einsum("EXD,EDH->EXH", x, wi.astype(x.dtype)) + bi[:, None].astype(x.dtype)
    hidden = nn.gelu(hidden)
    out = jnp.einsum("EXH,EHD->EXD", hidden, wo.astype(x.dtype)) + bo[:, None].astype(x.dtype)
    return out.reshape(e, g, c, d).transpose(1, 0, 2, 3)


def _group(a: Array, group_size: str | int) -> Array:
  """[B, N, ...] -> [G, S, ...] per `group_size` (already validated)."""
  b, n = a.shape[:2]
  if group_size == "example":
    return a
  s = b * n if group_size == "batch" else group_size
  return a.reshape((b * n // s, s) + a.shape[2:])


class MoeMlp(nn.Module):
  """Sparse MoE replacement for the encoder MLP: x [B, N, D] -> ([B, N, D], metrics).

  Tokens no expert processed come out as 0, so the block's residual passes them unchanged.

  Attributes:
    num_experts: E.
    hidden_dim: H, each expert's hidden width.
    router: a key of ROUTERS.
    router_kwargs: extra router attributes (capacity factors, k, noise, loss weights), as a
      mapping or a tuple of (name, value) pairs.
    group_size: "example" routes each example separately (G = B, S = N); "batch" routes the
      whole batch as one group; an int n cuts the flattened B * N tokens into groups of n.
    dispatch: "gather" (cheaper on one device) or "einsum" (lowers to all-to-all when the
      expert axis is sharded).
  """

  num_experts: int
  hidden_dim: int
  router: str = "expert_choice"
  router_kwargs: Mapping[str, Any] | tuple[tuple[str, Any], ...] = ()
  group_size: str | int = "example"
  dispatch: str = "gather"
  param_dtype: str = "float32"

  def _check(self, b: int, n: int) -> None:
    if self.router not in ROUTERS:
      raise ValueError(f"moe router={self.router!r} is not known; valid: {', '.join(ROUTERS)}.")
    if self.dispatch not in ("gather", "einsum"):
      raise ValueError(f"moe dispatch={self.dispatch!r} must be 'gather' or 'einsum'.")
    if isinstance(self.group_size, str):
      if self.group_size not in ("example", "batch"):
        raise ValueError(f"moe group_size={self.group_size!r} must be 'example', 'batch' or "
                         "a positive int.")
    elif self.group_size < 1 or (b * n) % self.group_size:
      raise ValueError(f"moe group_size={self.group_size} does not divide the B * N = {b} * {n}"
                       f" = {b * n} tokens of the batch.")

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, gate_input: Array | None = None, *,
               train: bool, segments: Array | None = None) -> tuple[Array, Metrics]:
    """x [B, N, D], mask bool [B, N], gate_input [B, N, Dg] (defaults to x), segments int
    [B, N]: each token's modality id, for per-modality router losses (None: one modality)."""
    b, n, d = x.shape
    self._check(b, n)
    mask = jnp.ones((b, n), bool) if mask is None else mask.astype(bool)
    gate_input = x if gate_input is None else gate_input
    xg = _group(x, self.group_size)
    router = ROUTERS[self.router](self.num_experts, **dict(self.router_kwargs), name="router")
    routing, metrics = router(
        _group(gate_input, self.group_size), train=train, valid=_group(mask, self.group_size),
        segments=None if segments is None else _group(segments, self.group_size))
    gather = self.dispatch == "gather"
    buffers = routing.dispatch(xg) if gather else routing.dispatch_einsum(xg)  # [G, E, C, D]
    # On a mesh, E moves onto the expert axis (the all-to-all of expert parallelism) and back.
    buffers = logical.constrain(buffers, "expert_group", "expert", None, None)
    y = Experts(self.num_experts, self.hidden_dim, d, self.param_dtype, name="experts")(buffers)
    y = logical.constrain(y, "expert_group", "expert", None, None)
    out = routing.combine(y) if gather else routing.combine_einsum(y)  # [G, S, D]
    out = logical.constrain(out, "batch", None, None)
    return out.reshape(b, n, d), metrics

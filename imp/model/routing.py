"""Token-to-expert assignment of an MoE layer (IMP §3.3; V-MoE; GShard): the dispatcher.

A router's probabilities [G, S, E] become a `Routing`: which token fills each expert slot and
with what combine weight. Expert choice (IMP) lets each expert pick its top-C tokens; token
choice top-k (Switch, GShard, V-MoE) lets each token pick k experts, filling slots in token
order or, with batch-priority routing (V-MoE §4.1, LIMoE), in order of the tokens' top gate.

Shape glossary (as imp/model/moe.py): G groups, S tokens per group, E experts, C capacity
(slots per expert per group), D width, K experts per token.
"""

from __future__ import annotations

import math

import flax
import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]


@flax.struct.dataclass
class Routing:
  """Which token fills each expert slot, and with what combine weight.

  Attributes:
    expert_index: int32 [G, E, C], token of the group in slot (e, c); 0 where not `valid`.
    weight: float32 [G, E, C], combine weight of the slot; 0 where not `valid`.
    valid: bool [G, E, C], the slot holds a token.
    group_size: S (static), needed to scatter back to token positions.
  """

  expert_index: Array
  weight: Array
  valid: Array
  group_size: int = flax.struct.field(pytree_node=False)

  def dispatch(self, x: Array) -> Array:
    """Gathers tokens into expert buffers: x [G, S, D] -> [G, E, C, D]; empty slots are 0."""
    buffers = jax.vmap(lambda xg, ig: xg[ig])(x, self.expert_index)
    return jnp.where(self.valid[..., None], buffers, jnp.zeros((), x.dtype))

  def combine(self, y: Array) -> Array:
    """Scatter-adds weight * y [G, E, C, D] to token positions: -> [G, S, D].

    Tokens no expert picked get 0; the caller adds the residual.
    """
    d = y.shape[-1]
    # `where`, not a plain product: an expert's output on an empty slot must not leak even if
    # it were inf or NaN.
    wy = jnp.where(self.valid[..., None], self.weight.astype(y.dtype)[..., None] * y, 0)
    scatter = lambda yg, ig: jnp.zeros((self.group_size, d), y.dtype).at[  # noqa: E731
        ig.reshape(-1)].add(yg.reshape(-1, d))
    return jax.vmap(scatter)(wy, self.expert_index)

  def dispatch_mask(self) -> Array:
    """float32 [G, S, E, C]: 1 where token s fills slot (e, c)."""
    one_hot = jax.nn.one_hot(self.expert_index, self.group_size, dtype=jnp.float32)  # GECS
    one_hot = one_hot * self.valid[..., None]
    return jnp.transpose(one_hot, (0, 3, 1, 2))

  def combine_tensor(self) -> Array:
    """float32 [G, S, E, C]: the dispatch mask times each slot's combine weight."""
    return self.dispatch_mask() * self.weight[:, None]

  def dispatch_einsum(self, x: Array) -> Array:
    """As `dispatch`, as one einsum; under a mesh with an `expert` axis it lowers to all-to-all
    (GShard, vmoe). The gather form is cheaper on a single device."""
    return jnp.einsum("GSEC,GSD->GECD", self.dispatch_mask().astype(x.dtype), x)

  def combine_einsum(self, y: Array) -> Array:
    """As `combine`, as one einsum with the combine tensor."""
    return jnp.einsum("GSEC,GECD->GSD", self.combine_tensor().astype(y.dtype), y)


def capacity_for(tokens_per_group: int, num_experts: int, capacity_factor: float,
                 k: int = 1) -> int:
  """Slots per expert per group: ceil(k * S * capacity_factor / E), clipped to [1, S].

  Expert choice uses k = 1 (at factor 1.0 every token is picked once on average); token
  choice passes its k, since each token asks for k slots. The 1e-9 slack keeps float noise
  from adding a slot (100 * 1.1 / 10 is 11.000000000000002 in floating point).
  """
  if tokens_per_group < 1 or num_experts < 1 or k < 1 or capacity_factor <= 0:
    raise ValueError(
        f"capacity_for needs tokens_per_group, num_experts, k >= 1 and capacity_factor > 0; "
        f"got {tokens_per_group}, {num_experts}, {k}, {capacity_factor}.")
  capacity = math.ceil(k * tokens_per_group * capacity_factor / num_experts - 1e-9)
  return int(min(max(capacity, 1), tokens_per_group))


def valid_or_all(valid: Array | None, probs: Array) -> Array:
  return jnp.ones(probs.shape[:2], bool) if valid is None else valid.astype(bool)


def routing_metrics(routing: Routing, probs: Array, valid: Array) -> Metrics:
  """Router health, all float32.

  expert_fraction [E]: share of filled slots (over all groups) held by each expert.
  dropped_fraction []: share of valid tokens that no expert processes.
  router_entropy []: mean over valid tokens of the entropy of probs [G, S, E].
  router_prob [E]: mean router probability of each expert over valid tokens. Under expert
    choice every expert fills its capacity, so expert_fraction is uniform by construction;
    this is what shows which experts a task or modality prefers.
  """
  slots = routing.valid.astype(jnp.float32)
  per_expert = slots.sum(axis=(0, 2))
  expert_fraction = per_expert / jnp.maximum(per_expert.sum(), 1.0)
  g = jnp.arange(slots.shape[0])[:, None, None]
  hits = jnp.zeros(probs.shape[:2], jnp.float32).at[g, routing.expert_index].add(slots)
  validf = valid.astype(jnp.float32)
  num_valid = jnp.maximum(validf.sum(), 1.0)
  dropped = ((hits == 0) * validf).sum() / num_valid
  plogp = jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0)
  entropy = (-plogp.sum(-1) * validf).sum() / num_valid
  router_prob = (probs * validf[..., None]).sum(axis=(0, 1)) / num_valid
  return {"expert_fraction": expert_fraction, "dropped_fraction": dropped,
          "router_entropy": entropy, "router_prob": router_prob}


def expert_choice_routing(probs: Array, capacity: int,
                          valid: Array | None = None) -> tuple[Routing, Metrics]:
  """Expert choice (Zhou et al., 2022): each expert takes its top-C tokens of the group.

  Args:
    probs: float32 [G, S, E] router probabilities.
    capacity: C, clipped to [1, S].
    valid: bool [G, S], False for padding; padding is never selected.

  Returns:
    Routing with weight = the chosen token's probability for that expert, and metrics.
    Ties go to the lower token index (`lax.top_k` is stable). When C exceeds the number of
    valid tokens, the extra slots are empty (valid False, weight 0).
  """
  _, s, _ = probs.shape
  capacity = int(min(max(capacity, 1), s))
  valid = valid_or_all(valid, probs)
  # Probabilities lie in [0, 1], so -1 ranks padding below every real token.
  scores = jnp.where(valid[..., None], probs, -1.0)
  top, index = jax.lax.top_k(jnp.swapaxes(scores, 1, 2), capacity)  # [G, E, C]
  slot_valid = top >= 0
  routing = Routing(expert_index=jnp.where(slot_valid, index, 0).astype(jnp.int32),
                    weight=jnp.where(slot_valid, top, 0.0).astype(jnp.float32),
                    valid=slot_valid, group_size=s)
  return routing, routing_metrics(routing, probs, valid)


def top_k_gates(probs: Array, k: int, normalize: bool = True) -> tuple[Array, Array]:
  """Each token's top-k experts: probs [G, S, E] -> (gates [G, S, K], experts int [G, S, K]).

  With normalize and k > 1 the gates are renormalised over the k choices (GShard); k = 1
  keeps the raw probability (Switch), which is what gives the router a gradient.
  """
  gates, experts = jax.lax.top_k(probs, k)
  if normalize and k > 1:
    gates = gates / jnp.maximum(gates.sum(-1, keepdims=True), jnp.finfo(gates.dtype).tiny)
  return gates, experts


def token_choice_routing(probs: Array, k: int, capacity: int, valid: Array | None = None,
                         normalize: bool = True,
                         batch_priority: bool = False) -> tuple[Routing, Metrics]:
  """Token choice top-k (Switch for k = 1, GShard for k = 2) with a per-expert capacity.

  Slots fill in priority order: every token's first choice, then every second choice, ...;
  within a round tokens go in token order or, with batch_priority, in descending order of
  their highest router probability (V-MoE's batch-priority routing; ties keep token order).
  A choice that finds its expert full is dropped (only that choice). Padding is never
  dispatched.

  Args:
    probs: float32 [G, S, E].
    k: experts per token, 1 <= k <= E.
    capacity: C, clipped to [1, S].
    valid: bool [G, S].
    normalize: renormalise gates over the k choices (before capacity drops, as GShard).
    batch_priority: order tokens by their top probability instead of their position.
  """
  g, s, e = probs.shape
  if not 1 <= k <= e:
    raise ValueError(f"token choice k={k} must be in [1, num_experts={e}].")
  capacity = int(min(max(capacity, 1), s))
  valid = valid_or_all(valid, probs)
  gates, experts = top_k_gates(probs, k, normalize)
  order = jnp.arange(s, dtype=jnp.int32)[None].repeat(g, axis=0)  # [G, S] token of each rank
  if batch_priority:
    # Padding ranks last (its score is above every -probability); argsort is stable.
    order = jnp.argsort(jnp.where(valid, -probs.max(-1), 1.0), axis=1).astype(jnp.int32)
    gates, experts = (jnp.take_along_axis(a, order[..., None], axis=1) for a in (gates, experts))
  # Choices in priority order: [G, K*S], k-major so all first choices come first.
  experts = jnp.swapaxes(experts, 1, 2).reshape(g, k * s)
  gates = jnp.swapaxes(gates, 1, 2).reshape(g, k * s)
  chosen = jnp.tile(jnp.take_along_axis(valid, order, axis=1), (1, k))
  token = jnp.tile(order, (1, k))
  one_hot = jax.nn.one_hot(experts, e, dtype=jnp.int32) * chosen[..., None]  # [G, K*S, E]
  # Position of each choice in its expert's queue: how many earlier choices picked it.
  position = ((jnp.cumsum(one_hot, axis=1) - 1) * one_hot).sum(-1)
  kept = chosen & (position < capacity)
  slot = jnp.where(kept, position, capacity)  # out of range -> dropped by mode="drop"
  gi = jnp.arange(g)[:, None]
  scatter = lambda dtype, values: jnp.zeros((g, e, capacity), dtype).at[  # noqa: E731
      gi, experts, slot].set(values, mode="drop")
  routing = Routing(expert_index=scatter(jnp.int32, token),
                    weight=scatter(jnp.float32, gates.astype(jnp.float32)),
                    valid=scatter(bool, kept), group_size=s)
  return routing, routing_metrics(routing, probs, valid)

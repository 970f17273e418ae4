"""MoE routing, dispatch, balancing losses and the MoeMlp layer against loop references."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.model import moe

# Jitted once per shape: eager op-by-op dispatch compiles every primitive and is slower here.
expert_choice = jax.jit(moe.expert_choice_routing, static_argnums=1)
token_choice = jax.jit(moe.token_choice_routing, static_argnums=(1, 2, 4))
dispatch_mask = jax.jit(lambda routing: routing.dispatch_mask())

# ------------------------------------------------------------------------------------------
# Loop references, written from the papers, independent of the implementation.


def ref_expert_choice(probs, capacity, valid):
  """{(g, e): [(token, weight), ...]} in slot order: each expert takes its top-C valid tokens."""
  g_, s_, e_ = probs.shape
  c = min(max(capacity, 1), s_)
  slots = {}
  for g in range(g_):
    for e in range(e_):
      tokens = [s for s in range(s_) if valid[g, s]]
      tokens.sort(key=lambda s, g=g, e=e: -float(probs[g, s, e]))  # stable: ties keep order
      slots[g, e] = [(s, float(probs[g, s, e])) for s in tokens[:c]]
  return slots


def ref_token_choice(probs, k, capacity, valid, normalize=True):
  """GShard: all first choices in token order, then all second choices; full experts drop."""
  g_, s_, e_ = probs.shape
  c = min(max(capacity, 1), s_)
  slots = {}
  for g in range(g_):
    choice, gate = [], []
    for s in range(s_):
      order = sorted(range(e_), key=lambda e, g=g, s=s: -float(probs[g, s, e]))[:k]
      w = [float(probs[g, s, e]) for e in order]
      if normalize and k > 1:
        w = [x / sum(w) for x in w]
      choice.append(order)
      gate.append(w)
    for e in range(e_):
      slots[g, e] = []
    for j in range(k):
      for s in range(s_):
        if valid[g, s] and len(slots[g, choice[s][j]]) < c:
          slots[g, choice[s][j]].append((s, gate[s][j]))
  return slots


def routing_slots(routing):
  """The same {(g, e): [(token, weight)]} read off a Routing; checks empty slots are clean."""
  index, weight, valid = (np.asarray(a) for a in (routing.expert_index, routing.weight,
                                                   routing.valid))
  assert np.all(weight[~valid] == 0) and np.all(index[~valid] == 0)
  slots = {}
  for g in range(index.shape[0]):
    for e in range(index.shape[1]):
      n = int(valid[g, e].sum())
      assert valid[g, e, :n].all(), "filled slots must come first"
      slots[g, e] = [(int(index[g, e, c]), float(weight[g, e, c])) for c in range(n)]
  return slots


def assert_same_slots(got, want):
  assert got.keys() == want.keys()
  for key in want:
    assert [s for s, _ in got[key]] == [s for s, _ in want[key]], key
    np.testing.assert_allclose([w for _, w in got[key]], [w for _, w in want[key]], rtol=1e-6)


def dropped_tokens(slots, valid):
  routed = {(g, s) for (g, _), items in slots.items() for s, _ in items}
  return {(g, s) for g, s in zip(*np.nonzero(valid), strict=True) if (g, s) not in routed}


def make_case(seed, g, s, e, kind, padded):
  rng = np.random.RandomState(seed)
  if kind == "ties":  # softmax of small integer logits: exact ties across tokens and experts
    logits = rng.randint(0, 3, (g, s, e)).astype(np.float32)
  else:
    logits = rng.normal(size=(g, s, e)).astype(np.float32)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
  valid = np.ones((g, s), bool)
  if padded:
    valid = rng.rand(g, s) > 0.35
    valid[0, :] = False  # one group that is all padding
  return probs, valid


# (G, S, E, capacity, k, probs kind, padded)
CASES = [
    (2, 8, 4, 2, 1, "random", False),
    (2, 8, 4, 2, 2, "ties", False),
    (3, 7, 3, 1, 1, "random", True),   # capacity 1
    (2, 6, 4, 6, 2, "ties", True),     # capacity == S
    (2, 5, 2, 9, 1, "ties", False),    # capacity > S, clipped
    (3, 10, 5, 3, 3, "random", True),
    (2, 12, 3, 2, 2, "ties", True),
]


@pytest.mark.parametrize("seed", range(len(CASES)))
def test_routing_matches_loop_references(seed):
  g, s, e, capacity, k, kind, padded = CASES[seed]
  probs, valid = make_case(seed, g, s, e, kind, padded)
  for routing, metrics, want in [
      (*expert_choice(jnp.asarray(probs), capacity, jnp.asarray(valid)),
       ref_expert_choice(probs, capacity, valid)),
      (*token_choice(jnp.asarray(probs), k, capacity, jnp.asarray(valid)),
       ref_token_choice(probs, k, capacity, valid)),
  ]:
    got = routing_slots(routing)
    assert_same_slots(got, want)
    want_dropped = dropped_tokens(want, valid)
    assert dropped_tokens(got, valid) == want_dropped
    mask = np.asarray(dispatch_mask(routing)).sum((2, 3))
    assert {(a, b) for a, b in zip(*np.nonzero((mask == 0) & valid), strict=True)} == \
        want_dropped
    np.testing.assert_allclose(metrics["dropped_fraction"],
                               len(want_dropped) / max(valid.sum(), 1), rtol=1e-6)
    assert not np.any(mask[~valid]), "padding must never be dispatched"


def test_token_choice_without_normalize_keeps_raw_gates():
  probs, valid = make_case(3, 2, 8, 4, "random", False)
  routing, _ = token_choice(jnp.asarray(probs), 2, 3, normalize=False)
  assert_same_slots(routing_slots(routing), ref_token_choice(probs, 2, 3, valid, False))


def test_top_k_ties_go_to_lower_index_and_hand_cases():
  # The routing relies on lax.top_k being stable.
  _, index = jax.lax.top_k(jnp.array([0.5, 0.2, 0.5, 0.5, 0.1]), 3)
  np.testing.assert_array_equal(index, [0, 2, 3])
  # Expert choice, C = 2. Expert 0 sees [.9, .1, .6, .6]: token 0, then the tie 2 vs 3 -> 2.
  # Expert 1 sees [.1, .9, .4, .4]: token 1, then 2. Token 3 is picked by no expert.
  probs = jnp.array([[[.9, .1], [.1, .9], [.6, .4], [.6, .4]]])
  routing, metrics = expert_choice(probs, 2)
  np.testing.assert_array_equal(routing.expert_index, [[[0, 2], [1, 2]]])
  np.testing.assert_allclose(routing.weight, [[[.9, .6], [.9, .4]]])
  np.testing.assert_allclose(metrics["dropped_fraction"], 0.25)
  # Token choice k = 2, C = 3, probs rows [.6 .4], [.7 .3], [.2 .8], [.1 .9] (rows sum to 1,
  # so normalised gates are the probabilities). First choices in token order: e0 <- t0, t1;
  # e1 <- t2, t3. Second choices: t0 -> e1 slot 2; t1 -> e1 full, dropped; t2 -> e0 slot 2;
  # t3 -> e0 full, dropped.
  probs = jnp.array([[[.6, .4], [.7, .3], [.2, .8], [.1, .9]]])
  routing, metrics = token_choice(probs, 2, 3)
  np.testing.assert_array_equal(routing.expert_index, [[[0, 1, 2], [2, 3, 0]]])
  np.testing.assert_allclose(routing.weight, [[[.6, .7, .2], [.8, .9, .4]]], rtol=1e-6)
  assert np.asarray(routing.valid).all() and metrics["dropped_fraction"] == 0
  # k = 1, C = 1: priority is token order, not probability: e0 takes t0 although t1 has .7.
  routing, metrics = token_choice(probs, 1, 1)
  np.testing.assert_array_equal(routing.expert_index, [[[0], [2]]])
  np.testing.assert_allclose(metrics["dropped_fraction"], 0.5)
  np.testing.assert_allclose(metrics["expert_fraction"], [0.5, 0.5])


def test_expert_choice_fills_exactly_capacity():
  probs, valid = make_case(0, 4, 16, 4, "random", False)
  routing, metrics = expert_choice(jnp.asarray(probs), 5)
  np.testing.assert_array_equal(np.asarray(routing.valid).sum(-1), np.full((4, 4), 5))
  np.testing.assert_allclose(metrics["expert_fraction"], np.full(4, 0.25))
  # Fewer valid tokens than slots: every valid token in every expert, the rest empty.
  valid = np.zeros((4, 16), bool)
  valid[:, :3] = True
  routing, _ = expert_choice(jnp.asarray(probs), 5, jnp.asarray(valid))
  np.testing.assert_array_equal(np.asarray(routing.valid).sum(-1), np.full((4, 4), 3))


@jax.jit
def paths(routing, x, y):
  ones = routing.replace(weight=routing.valid.astype(jnp.float32))
  return (routing.dispatch(x), routing.dispatch_einsum(x), routing.combine(y),
          routing.combine_einsum(y), ones.combine(ones.dispatch(x)),
          routing.dispatch_mask().sum((2, 3)))


def test_gather_and_einsum_dispatch_agree_and_identity_reconstructs():
  probs, valid = make_case(1, 3, 10, 4, "random", True)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 6))
  y = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 3, 6))
  ec = expert_choice(jnp.asarray(probs), 3, jnp.asarray(valid))[0]
  tc = token_choice(jnp.asarray(probs), 1, 2, jnp.asarray(valid))[0]
  for routing in (ec, tc):
    c = routing.expert_index.shape[-1]
    gather, einsum, combine, combine_einsum, identity, count = paths(routing, x, y[:, :, :c])
    np.testing.assert_allclose(gather, einsum, atol=1e-6)
    np.testing.assert_allclose(combine, combine_einsum, atol=1e-6)
    # Weights 1 and an identity expert: each token comes back once per slot it holds.
    np.testing.assert_allclose(identity, x * count[..., None], atol=1e-6)
  # Token choice k = 1 holds each token at most once: routed tokens exact, dropped ones 0.
  out, count = (np.asarray(a) for a in paths(tc, x, y[:, :, :2])[-2:])
  assert set(np.unique(count)) == {0.0, 1.0}
  np.testing.assert_array_equal(out[count == 1], np.asarray(x)[count == 1])
  np.testing.assert_array_equal(out[count == 0], 0)


def test_capacity_for():
  assert moe.capacity_for(8, 4, 1.0) == 2
  assert moe.capacity_for(196, 8, 1.0) == 25      # ceil(24.5)
  assert moe.capacity_for(100, 10, 1.1) == 11     # not 12 from 11.000000000000002
  assert moe.capacity_for(4, 8, 1.0) == 1         # at least one slot
  assert moe.capacity_for(10, 1, 2.0) == 10       # at most S
  assert moe.capacity_for(8, 4, 1.0, k=2) == 4
  assert moe.capacity_for(8, 4, 1.25, k=2) == 5
  with pytest.raises(ValueError, match="capacity_factor"):
    moe.capacity_for(8, 4, 0.0)


# ------------------------------------------------------------------------------------------
# Balancing losses.


def test_switch_and_importance_losses_hand_cases():
  s, e = 8, 4
  uniform = jnp.full((1, s, e), 1 / e)
  # f_e = P_e = 1/E for every e: E * E * (1/E)^2 = 1. argmax would send all ties to expert 0,
  # so pass a balanced top-1 assignment explicitly.
  top1 = jnp.arange(s)[None] % e
  np.testing.assert_allclose(moe.switch_load_balance_loss(uniform, top1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(moe.importance_loss(uniform), 0.0, atol=1e-6)
  # Collapsed: probs one-hot on expert 2, f = P = e_2, loss = E * 1 * 1 = E.
  collapsed = jax.nn.one_hot(jnp.full((1, s), 2), e)
  np.testing.assert_allclose(moe.switch_load_balance_loss(collapsed), float(e), rtol=1e-6)
  # importance = [0, 0, S, 0]: mean S/4, variance S^2/4 - S^2/16 = 3 S^2/16, CV^2 = 3.
  np.testing.assert_allclose(moe.importance_loss(collapsed), 3.0, rtol=1e-6)
  # Padding does not count: half collapsed tokens masked out, the uniform half remains.
  mixed = jnp.concatenate([uniform, collapsed], axis=1)
  valid = jnp.arange(2 * s)[None] < s
  top1 = jnp.concatenate([jnp.arange(s)[None] % e, jnp.full((1, s), 2)], axis=1)
  np.testing.assert_allclose(moe.switch_load_balance_loss(mixed, top1, valid), 1.0, rtol=1e-6)
  np.testing.assert_allclose(moe.importance_loss(mixed, valid), 0.0, atol=1e-6)


load_loss = jax.jit(moe.load_loss, static_argnums=(2, 3))


def ref_load_loss(clean, noisy, noise_std, k):
  """Shazeer et al. 2017 App. A by loops; Phi from math.erf."""
  _, s_, e_ = clean.shape
  load = [0.0] * e_
  for s in range(s_):
    for e in range(e_):
      others = sorted((noisy[0, s, j] for j in range(e_) if j != e), reverse=True)
      z = (clean[0, s, e] - others[k - 1]) / noise_std
      load[e] += 0.5 * (1 + math.erf(z / math.sqrt(2)))
  mean = sum(load) / e_
  return sum((x - mean) ** 2 for x in load) / e_ / (mean ** 2 + 1e-10)


def test_load_loss_tiny_cases():
  clean = np.array([[[1.0, 0.0, -1.0, 0.5], [0.2, 0.4, 0.1, -0.3]]], np.float32)
  noisy = np.array([[[1.2, 0.3, -0.5, 0.9], [0.0, 1.1, 0.6, -0.2]]], np.float32)
  for k in (1, 2):
    got = load_loss(jnp.asarray(clean), jnp.asarray(noisy), 0.5, k)
    np.testing.assert_allclose(got, ref_load_loss(clean, noisy, 0.5, k), rtol=1e-5)
  # Token 0 with k = 1, e = 0 (in the top-1): the k-th highest of the others is 0.9, so
  # P = Phi((1.0 - 0.9) / 0.5) = Phi(0.2); a smooth estimator has a gradient.
  grad = jax.jit(jax.grad(lambda c: moe.load_loss(c, jnp.asarray(noisy), 0.5, 1)))(
      jnp.asarray(clean))
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)
  # noise_std = 0: hard counts. Top-1 of noisy: token 0 -> e0, token 1 -> e1; load
  # [1, 1, 0, 0], mean 1/2, variance 1/4, CV^2 = 1.
  np.testing.assert_allclose(load_loss(jnp.asarray(clean), jnp.asarray(noisy), 0.0, 1), 1.0,
                             rtol=1e-6)
  # k = E: every expert always in the top-k, load uniform.
  assert load_loss(jnp.asarray(clean), jnp.asarray(noisy), 0.5, 4) == 0


# ------------------------------------------------------------------------------------------
# The layer.

X = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8))
TOP_K = {"k": 2, "capacity_factor_train": 2.0, "noise_std": 0.5, "switch_loss_weight": 0.01,
         "importance_loss_weight": 0.01, "load_loss_weight": 0.01}


def init(model, x=X, **kw):
  rngs = {"params": jax.random.PRNGKey(1), "router": jax.random.PRNGKey(2)}
  return jax.jit(lambda rngs, x, kw: model.init(rngs, x, train=True, **kw))(rngs, x, kw)


@pytest.mark.parametrize("router,kwargs", [("expert_choice", {}), ("top_k", TOP_K)])
def test_gradients_reach_router_and_every_expert_param(router, kwargs):
  model = moe.MoeMlp(4, 16, router=router, router_kwargs=kwargs)
  params = init(model)["params"]

  @jax.jit
  def grads(params):
    def loss(params):
      out, metrics = model.apply({"params": params}, X, train=True,
                                 rngs={"router": jax.random.PRNGKey(3)})
      return jnp.sum(out ** 2) + metrics["aux_loss"]
    return jax.grad(loss)(params)

  g = nn.unbox(grads(params))
  leaves = jax.tree_util.tree_leaves_with_path(g)
  assert len(leaves) == 5
  for path, leaf in leaves:
    assert np.all(np.isfinite(leaf)), path
    # Per expert, not just per tensor: every expert must learn.
    per_expert = np.abs(np.asarray(leaf)).reshape(leaf.shape[0], -1).sum(-1)
    if "experts" in jax.tree_util.keystr(path):
      assert np.all(per_expert > 0), path
    else:
      assert np.any(per_expert > 0), path


def test_params_have_logical_axes_and_per_expert_init_scale():
  model = moe.MoeMlp(8, 64)
  x = jnp.zeros((1, 4, 64))
  params = init(model, x)["params"]
  names = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(
      params, is_leaf=lambda a: isinstance(a, nn.Partitioned)):
    assert isinstance(leaf, nn.Partitioned) and len(leaf.names) == leaf.value.ndim, path
    names[jax.tree_util.keystr(path)] = leaf.names
  assert names["['router']['gate']['kernel']"] == ("embed", "expert")
  assert names["['experts']['wi']"] == ("expert", "embed", "mlp")
  assert names["['experts']['wo_bias']"] == ("expert", "embed")
  # Each expert is initialised like a lone Dense (fan-in D), not shrunk by sqrt(E).
  wi = np.asarray(params["experts"]["wi"].value)
  np.testing.assert_allclose(wi.std(), 1 / math.sqrt(64), rtol=0.1)


def test_grouping_dispatch_and_padding():
  base = moe.MoeMlp(4, 16)
  params = init(base)
  apply = lambda m: jax.jit(lambda p: m.apply(p, X, train=False))(params)  # noqa: E731
  out, _ = apply(base)
  # One group of all 16 tokens either way; 8 tokens per group is one group per example.
  np.testing.assert_allclose(apply(moe.MoeMlp(4, 16, group_size="batch"))[0],
                             apply(moe.MoeMlp(4, 16, group_size=16))[0], atol=1e-6)
  np.testing.assert_allclose(apply(moe.MoeMlp(4, 16, group_size=8))[0], out, atol=1e-6)
  np.testing.assert_allclose(apply(moe.MoeMlp(4, 16, dispatch="einsum"))[0], out, atol=1e-5)
  with pytest.raises(ValueError, match="group_size=3 does not divide"):
    apply(moe.MoeMlp(4, 16, group_size=3))
  with pytest.raises(ValueError, match="router='nope'"):
    apply(moe.MoeMlp(4, 16, router="nope"))
  # Padding never reaches an expert, so its output is 0; a separate gate input of another
  # width routes the same tokens.
  mask = jnp.arange(8)[None].repeat(2, 0) < jnp.array([[5], [8]])
  gate_input = jax.random.normal(jax.random.PRNGKey(4), (2, 8, 3))
  model = moe.MoeMlp(4, 16, router="top_k")
  variables = init(model, mask=mask, gate_input=gate_input)
  assert variables["params"]["router"]["gate"]["kernel"].value.shape == (3, 4)
  out, metrics = jax.jit(lambda v: model.apply(v, X, mask, gate_input, train=False))(variables)
  np.testing.assert_array_equal(out[0, 5:], 0)
  assert set(metrics) >= {"aux_loss", "expert_fraction", "dropped_fraction", "router_entropy"}
  for value in metrics.values():
    assert value.dtype == jnp.float32


def test_noise_is_deterministic_per_router_rng():
  model = moe.MoeMlp(4, 16, router="top_k", router_kwargs={"noise_std": 1.0})
  params = init(model)
  run = jax.jit(lambda p, rng, train: model.apply(p, X, train=train, rngs={"router": rng}),
                static_argnums=2)
  a, b, c = (run(params, jax.random.PRNGKey(seed), True) for seed in (0, 0, 1))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.allclose(a[0], c[0])
  # Eval adds no noise: the router rng is ignored.
  jax.tree.map(np.testing.assert_array_equal, run(params, jax.random.PRNGKey(0), False),
               run(params, jax.random.PRNGKey(1), False))
  # Expert choice: the same params seed gives the same layer, another seed another one.
  ec = moe.MoeMlp(4, 16)
  ec_init = jax.jit(lambda rng: ec.init(rng, X, train=True))
  ec_apply = jax.jit(lambda p: ec.apply(p, X, train=True)[0])
  p0, p1, p2 = (ec_init(jax.random.PRNGKey(seed)) for seed in (0, 0, 5))
  jax.tree.map(np.testing.assert_array_equal, p0, p1)
  assert not np.allclose(ec_apply(p0), ec_apply(p2))

"""Conditional MoE: routing conditions, attention experts, the inference merge, M3SAT front end."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.model import IMPModel, ModelConfig, MoeConfig, Request
from imp.model.attention_moe import MoeSelfAttention
from imp.model.conditions import (
  GateInput,
  StaticCondition,
  TokenCondition,
  roles_of,
  token_attributes,
)
from imp.model.encoder import Mlp, SelfAttention
from imp.model.expert_merge import merge_moe_attention, merge_moe_mlp
from imp.model.moe import MoeMlp, TopKRouter
from imp.model.perceiver import PerceiverFrontEnd, fourier_features

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(2, 6, 16)), jnp.float32)
MASK = jnp.ones((2, 6), bool)


def _experts_of(routing) -> np.ndarray:
  """bool [G, S, E]: which experts each token was dispatched to."""
  return np.asarray(routing.dispatch_mask().sum(-1) > 0)


# ---- Attributes (Table 2) --------------------------------------------------------------------


def test_attributes_derive_table2_from_the_requested_outputs():
  # Image classification: image input, class labels count as a text target, token visual,
  # from the inputs -> [1, 0, 0, 1, 1, 0, 0, 1] (the paper's example), no audio bits.
  cls = roles_of(classify=(("image", "digits"),), embed=())
  assert cls == (("image",), ("text",))
  assert token_attributes(*cls, "image") == (1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0)
  # Image-text retrieval (NCE): image input, text target; the text tokens are targets.
  nce = roles_of(classify=(), embed=("image", "text"))
  assert token_attributes(*nce, "text") == (1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0)
  # Audio extension: audio-text retrieval; video is visual.
  av = roles_of(classify=(), embed=("audio", "text"))
  assert token_attributes(*av, "audio") == (0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 1)
  assert token_attributes(("video",), ("text",), "video")[:8] == (1, 0, 0, 1, 1, 0, 0, 1)
  # A fused image+audio classification: both are inputs.
  fused = roles_of(classify=(("image", "h"),), embed=(), fuse=("image", "audio"))
  assert token_attributes(*fused, "audio") == (1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 1)


def test_eval_requests_get_the_task_that_produced_the_output():
  """The plan routes an eval request's modalities; the model only reads the routes."""
  from imp.plan.routing import route_eval
  from imp.step.step import as_task

  tasks = (("cls", as_task(Request(classify=(("image", "d"),)), 0)),
           ("nce", as_task(Request(embed=("image", "text")), 1)))
  model = IMPModel(ModelConfig(), heads=(("d", 10),), num_tasks=2)

  def condition(request, modality):
    return model.condition_of(route_eval(request, tasks), modality)

  zero_shot = Request(embed=("image",), features=("image",))
  assert condition(zero_shot, "image").task == 1  # the NCE task embeds images
  assert condition(Request(features=("image",)), "image").task == 0  # classifies
  text = condition(Request(embed=("text",)), "text")
  assert text.task == 1 and text.attributes[:8] == (1, 0, 0, 1, 0, 1, 0, 0)
  # A training request carries its own route; an unrouted one is task 0 with its own roles.
  assert model.condition_of(tasks[1][1], "text") == text
  alone = model.condition_of(Request(embed=("text",)), "text")
  assert alone.task == 0 and alone.attributes[:8] == (0, 1, 0, 0, 0, 1, 0, 1)


# ---- Gate inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize("condition", ["token", "context"])
def test_data_dependent_gate_inputs(condition):
  gate = GateInput(condition)
  params = gate.init(jax.random.PRNGKey(0), X, MASK)
  out = gate.apply(params, X, MASK)
  assert out.shape == ((2, 6, 16) if condition == "token" else (2, 6, 32))
  np.testing.assert_array_equal(out[..., :16], X)  # the token itself
  changed = X.at[:, 0].add(1.0)  # change token 0 only
  out2 = gate.apply(params, changed, MASK)
  other = np.abs(np.asarray(out2 - out)[:, 1:]).max()
  # token: token 1's gate input ignores token 0; context: it sees it through the pool.
  assert (other == 0) if condition == "token" else (other > 1e-4)


@pytest.mark.parametrize("condition", ["modality", "task", "attribute"])
def test_static_conditions_route_equal_conditions_to_equal_experts(condition):
  # One sequence mixing two conditions: image tokens of task 0 and text tokens of task 1.
  parts = [TokenCondition("image", 0, token_attributes(("image",), ("text",), "image")),
           TokenCondition("text", 1, token_attributes(("image",), ("text",), "text"))]
  ids, tasks, attrs = (np.concatenate(a) for a in zip(*(p.arrays(3) for p in parts),
                                                          strict=True))
  static = StaticCondition(condition, 8, num_tasks=2)
  sp = static.init(jax.random.PRNGKey(0), ids, tasks, attrs)
  cond = static.apply(sp, ids, tasks, attrs)  # [N, Dc]
  assert cond.shape == (6, 8)
  cond = jnp.broadcast_to(cond[None], (2, 6, 8))
  gate = GateInput(condition)
  # The gate input depends only on the condition: any token values give the same one.
  g1 = gate.apply({}, X, MASK, cond)
  g2 = gate.apply({}, X * 7.0 + 3.0, MASK, cond)
  np.testing.assert_array_equal(g1, g2)
  assert g1.shape == (2, 6, 8)
  router = TopKRouter(8, k=2, capacity_factor_train=4.0, capacity_factor_eval=4.0)
  rp = router.init(jax.random.PRNGKey(1), g1, train=False)
  routing, _ = router.apply(rp, g1, train=False)
  chosen = _experts_of(routing)  # [G, S, E]
  assert (chosen.sum(-1) == 2).all()  # capacity S: no token dropped
  for seg in (slice(0, 3), slice(3, 6)):
    assert (chosen[:, seg] == chosen[:1, seg.start:seg.start + 1]).all()
  # The two conditions' embeddings differ, so a router can tell them apart.
  assert np.abs(np.asarray(g1[0, 0] - g1[0, 3])).max() > 1e-3


# ---- Attention experts -----------------------------------------------------------------------


def _attention(routers):
  return MoeSelfAttention(16, 2, num_experts=4, routers=routers, router="top_k",
                          router_kwargs=(("k", 1),))


def test_separate_qkv_routers_choose_differently_when_their_weights_differ():
  attn = _attention("qkv")
  params = nn.unbox(attn.init(jax.random.PRNGKey(0), X, MASK, X, train=False))["params"]
  assert set(params) >= {"router_q", "router_k", "router_v", "query", "key", "value", "out"}

  def choices(p):
    _, state = attn.apply({"params": p}, X, MASK, X, train=False,
                          capture_intermediates=lambda m, _: (m.name or "").startswith("router_"))
    inter = state["intermediates"]
    return {r: _experts_of(inter[f"router_{r}"]["__call__"][0][0]) for r in "qkv"}

  differ = choices(params)
  assert (differ["q"] != differ["k"]).any() and (differ["k"] != differ["v"]).any()
  same = dict(params, router_k=params["router_q"], router_v=params["router_q"])
  tied = choices(same)
  np.testing.assert_array_equal(tied["q"], tied["k"])
  np.testing.assert_array_equal(tied["q"], tied["v"])


def test_shared_router_routes_qkv_and_output_with_one_router():
  attn = _attention("shared")
  params = nn.unbox(attn.init(jax.random.PRNGKey(0), X, MASK, X, train=False))["params"]
  assert "router" in params and "router_q" not in params
  assert params["out"]["kernel"].shape == (4, 16, 16)  # output projection has experts too
  out, metrics = attn.apply({"params": params}, X, MASK, X, train=False)
  assert out.shape == X.shape and "attn_expert_fraction" in metrics


# ---- Inference merge (§3.3) ------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2])
def test_merged_experts_equal_routed_experts(k):
  cond = jnp.asarray(RNG.normal(size=(8,)), jnp.float32)
  gate = jnp.broadcast_to(cond, (2, 6, 8))
  capacity = dict(k=k, capacity_factor_train=4.0 / k, capacity_factor_eval=4.0 / k)
  moe = MoeMlp(4, 32, router="top_k", router_kwargs=tuple(capacity.items()))
  mp = nn.unbox(moe.init(jax.random.PRNGKey(0), X, MASK, gate, train=False))["params"]
  routed, _ = moe.apply({"params": mp}, X, MASK, gate, train=False)
  merged = merge_moe_mlp(mp, cond, k)
  assert merged["wi"]["kernel"].shape == (16, 32 * k)  # dense MLP, hidden k * H
  dense = Mlp(16, 32 * k).apply({"params": merged}, X)
  np.testing.assert_allclose(dense, routed, atol=1e-5)
  for routers in ("shared", "qkv"):
    attn = MoeSelfAttention(16, 2, 4, routers=routers, router="top_k",
                            router_kwargs=tuple(capacity.items()))
    ap = nn.unbox(attn.init(jax.random.PRNGKey(1), X, MASK, gate, train=False))["params"]
    routed, _ = attn.apply({"params": ap}, X, MASK, gate, train=False)
    merged = merge_moe_attention(ap, cond, k, num_heads=2)
    dense = SelfAttention(16, 2).apply({"params": merged}, X, MASK)
    np.testing.assert_allclose(dense, routed, atol=1e-5)


# ---- M3SAT front end -------------------------------------------------------------------------


def test_fourier_features_hand_case():
  # grid (3,), 2 bands: positions -1, 0, 1; bands linspace(1, 3/2, 2) = 1, 1.5.
  # p = 0 -> [0, sin 0, sin 0, cos 0, cos 0]; p = 1 -> [1, sin pi, sin 1.5pi, cos pi, cos 1.5pi].
  f = fourier_features((3,), 2)
  np.testing.assert_allclose(f[1], [0, 0, 0, 1, 1], atol=1e-6)
  np.testing.assert_allclose(f[2], [1, 0, -1, -1, 0], atol=1e-6)
  assert fourier_features((1, 4, 4), 6).shape == (16, 3 * 13)


def test_perceiver_maps_every_modality_to_the_same_latents_and_fuses_them():
  front = PerceiverFrontEnd(16, 5, 2, 32, 3, (("audio", 16), ("image", 4), ("text", 16)),
                            (1, 2, 2), (4, 4), 40)
  image, audio = jnp.ones((2, 8, 8, 1)), jnp.ones((2, 8, 8, 1))
  text = jnp.ones((2, 7), jnp.int32)
  params = front.init(jax.random.PRNGKey(0), "image", image)
  for m, x in (("image", image), ("audio", audio), ("text", text)):
    params = {"params": {**params["params"], **front.init(
        jax.random.PRNGKey(0), m, x)["params"]}}
    z, mask = front.apply(params, m, x)
    assert z.shape == (2, 5, 16) and mask.shape == (2, 5)

  moe = MoeConfig.from_config(dict(num_experts=4, router="top_k", router_args=dict(k=2),
                                   condition="modality", attention="qkv"))
  config = ModelConfig(width=16, depth=1, num_heads=2, mlp_dim=32, moe=moe,
                       front_end="perceiver", perceiver_latents=5, perceiver_bands=3)
  from imp.step.step import as_task

  request = as_task(Request(classify=(("image", "av"),), fuse=("image", "audio")), 0)
  model = IMPModel(config, heads=(("av", 10),), modalities=("audio", "image", "text"),
                   num_tasks=1)
  inputs = {"image": image, "audio": audio, "text": text}
  variables = model.init(jax.random.PRNGKey(0), inputs, model.init_request())
  out, state = model.apply(variables, inputs, request, mutable=["intermediates"])
  assert out["logits/av"].shape == (2, 10)
  metrics = state["intermediates"]["moe_image+audio"][0]
  assert metrics["attn_q_expert_fraction"].shape == (1, 4)  # [moe layers, experts]

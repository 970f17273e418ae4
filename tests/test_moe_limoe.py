"""Routing options from the papers: raw (not renormalised) top-k gates, batch-priority routing,
and LIMoE's per-modality entropy losses, against hand-derived cases and NumPy references."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.model import moe
from imp.model.encoder import MoeConfig

token_choice = jax.jit(moe.token_choice_routing, static_argnums=(1, 2, 4, 5))


def _slots(routing):
  """{(g, e): [(token, weight), ...]} of the filled slots, in slot order."""
  index, weight, valid = (np.asarray(a) for a in (routing.expert_index, routing.weight,
                                                   routing.valid))
  return {(g, e): [(int(index[g, e, c]), float(weight[g, e, c]))
                   for c in range(index.shape[2]) if valid[g, e, c]]
          for g in range(index.shape[0]) for e in range(index.shape[1])}


# ------------------------------------------------------------------------------------------
# renormalize_gates.


def _router_on(probs_row, **kwargs):
  """A TopKRouter whose gate reproduces `probs_row` exactly for a one-feature input of 1."""
  router = moe.TopKRouter(len(probs_row), **kwargs)
  x = jnp.ones((1, 1, 1))
  params = {"params": {"gate": {"kernel": jnp.log(jnp.asarray([probs_row], jnp.float32))}}}
  routing, _ = router.apply(params, x, train=False)
  return _slots(routing)


def test_renormalize_gates_hand_case():
  # softmax values 0.5, 0.3, 0.2; the token picks experts 0 and 1.
  on = MoeConfig.from_config(dict(num_experts=3, router="top_k", router_args=dict(k=2)))
  off = MoeConfig.from_config(dict(num_experts=3, router="top_k", router_args=dict(k=2),
                                   renormalize_gates=False))
  assert on.renormalize_gates and "normalize" not in dict(on.layer_router_args)
  assert dict(off.layer_router_args)["normalize"] is False
  got_on = _router_on([0.5, 0.3, 0.2], **dict(on.layer_router_args))
  got_off = _router_on([0.5, 0.3, 0.2], **dict(off.layer_router_args))
  # GShard: 0.5 / 0.8 = 0.625 and 0.3 / 0.8 = 0.375; raw: 0.5 and 0.3 (Uni-Perceiver-MoE eq. 3).
  np.testing.assert_allclose([got_on[0, 0][0][1], got_on[0, 1][0][1]], [0.625, 0.375], rtol=1e-6)
  np.testing.assert_allclose([got_off[0, 0][0][1], got_off[0, 1][0][1]], [0.5, 0.3], rtol=1e-6)
  assert got_on[0, 2] == [] and got_off[0, 2] == []


def test_renormalize_gates_config_errors():
  with pytest.raises(ValueError, match="model.moe.renormalize_gates='no' must be True or False"):
    MoeConfig.from_config(dict(renormalize_gates="no"))
  with pytest.raises(ValueError, match="router_args.normalize: set model.moe.renormalize_gates"):
    MoeConfig.from_config(dict(num_experts=2, router="top_k", router_args=dict(normalize=False)))


# ------------------------------------------------------------------------------------------
# Batch-priority routing.


def ref_batch_priority(probs, k, capacity, valid):
  """V-MoE BPR: tokens ranked by their top probability (stable); first choices of every token
  in that order, then second choices, ...; a choice finding its expert full is dropped."""
  g_, s_, e_ = probs.shape
  slots = {}
  for g in range(g_):
    ranked = sorted([s for s in range(s_) if valid[g, s]], key=lambda s: -float(probs[g, s].max()))
    for e in range(e_):
      slots[g, e] = []
    for j in range(k):
      for s in ranked:
        order = sorted(range(e_), key=lambda e, s=s: -float(probs[g, s, e]))[:k]
        w = np.asarray([probs[g, s, e] for e in order], np.float64)
        w = w / w.sum() if k > 1 else w
        if len(slots[g, order[j]]) < capacity:
          slots[g, order[j]].append((s, float(w[j])))
  return slots


def test_batch_priority_hand_case():
  # Three tokens, two experts, capacity 1, k = 1: all prefer expert 0. Token order keeps token
  # 0; batch priority keeps token 2, the most confident (0.9 > 0.8 > 0.6).
  probs = jnp.asarray([[[0.6, 0.4], [0.8, 0.2], [0.9, 0.1]]], jnp.float32)
  plain, _ = token_choice(probs, 1, 1, None, True, False)
  bpr, metrics = token_choice(probs, 1, 1, None, True, True)
  assert [s for s, _ in _slots(plain)[0, 0]] == [0]
  assert [s for s, _ in _slots(bpr)[0, 0]] == [2]
  np.testing.assert_allclose(_slots(bpr)[0, 0][0][1], 0.9, rtol=1e-6)
  np.testing.assert_allclose(metrics["dropped_fraction"], 2 / 3, rtol=1e-6)


@pytest.mark.parametrize("seed, g, s, e, capacity, k", [
    (0, 2, 9, 3, 2, 1), (1, 3, 8, 4, 2, 2), (2, 2, 12, 4, 3, 2), (3, 1, 10, 5, 1, 3)])
def test_batch_priority_matches_reference(seed, g, s, e, capacity, k):
  rng = np.random.RandomState(seed)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(rng.normal(size=(g, s, e)) * 2.0), -1))
  valid = rng.rand(g, s) > 0.25
  routing, _ = token_choice(jnp.asarray(probs), k, capacity, jnp.asarray(valid), True, True)
  got, want = _slots(routing), ref_batch_priority(probs, k, capacity, valid)
  assert got.keys() == want.keys()
  for key in want:
    assert [t for t, _ in got[key]] == [t for t, _ in want[key]], key
    np.testing.assert_allclose([w for _, w in got[key]], [w for _, w in want[key]], rtol=1e-5)


# ------------------------------------------------------------------------------------------
# LIMoE entropy losses.


def _h(p):
  p = np.asarray(p, np.float64)
  return float(-sum(x * math.log(x) for x in p if x > 0))


def ref_entropy_losses(probs, valid, segments, threshold):
  """Per modality m: mean_i H(p_i) (local) and -H(mean_i p_i) or max(0, tau - H) (global)."""
  local = glob = 0.0
  for m in np.unique(segments[valid]):
    rows = probs[valid & (segments == m)].astype(np.float64)
    local += np.mean([_h(r) for r in rows])
    h = _h(rows.mean(0))
    glob += -h if threshold is None else max(0.0, threshold - h)
  return local, glob


def test_entropy_losses_hand_case():
  # One modality; tokens [1, 0] and [0, 1]: each is certain (local 0), together uniform over
  # two experts (global -log 2; with tau = log 3 the thresholded loss is log 3 - log 2).
  probs = jnp.asarray([[[1.0, 0.0], [0.0, 1.0]]])
  np.testing.assert_allclose(moe.local_entropy_loss(probs), 0.0, atol=1e-7)
  np.testing.assert_allclose(moe.global_entropy_loss(probs), -math.log(2), rtol=1e-6)
  np.testing.assert_allclose(moe.global_entropy_loss(probs, threshold=math.log(3)),
                             math.log(3) - math.log(2), rtol=1e-6)
  np.testing.assert_allclose(moe.global_entropy_loss(probs, threshold=math.log(2) / 2), 0.0)
  # As two modalities, each is one certain token: local 0, global -H([1, 0]) = 0 for each.
  segments = jnp.asarray([[0, 3]])
  np.testing.assert_allclose(moe.global_entropy_loss(probs, None, segments, 4), 0.0, atol=1e-7)


@pytest.mark.parametrize("seed, threshold", [(0, None), (1, 1.0), (2, 0.3)])
def test_entropy_losses_match_numpy(seed, threshold):
  rng = np.random.RandomState(seed)
  g, s, e = 3, 7, 5
  probs = np.asarray(jax.nn.softmax(jnp.asarray(rng.normal(size=(g, s, e)) * 2.0), -1))
  valid = rng.rand(g, s) > 0.3
  segments = rng.randint(0, 3, (g, s))
  segments[:, 0] = 3  # a fourth modality, partly padded
  want_local, want_global = ref_entropy_losses(probs, valid, segments, threshold)
  args = (jnp.asarray(probs), jnp.asarray(valid), jnp.asarray(segments), 4)
  np.testing.assert_allclose(moe.local_entropy_loss(*args), want_local, rtol=1e-5)
  np.testing.assert_allclose(moe.global_entropy_loss(*args, threshold), want_global, rtol=1e-5,
                             atol=1e-6)


def test_router_adds_weighted_entropy_losses_and_they_have_gradients():
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 4)), jnp.float32)
  segments = jnp.asarray([[0, 0, 0, 2, 2, 2]] * 2)
  for cls, extra in ((moe.TopKRouter, dict(k=2, batch_priority=True)),
                     (moe.ExpertChoiceRouter, {})):
    router = cls(4, local_entropy_weight=0.5, global_entropy_weight=2.0,
                 global_entropy_threshold=1.2, **extra)
    params = nn.unbox(router.init(jax.random.PRNGKey(0), x, train=True))

    def aux(p, router=router):
      return router.apply(p, x, train=True, segments=segments)[1]["aux_loss"]

    _, metrics = router.apply(params, x, train=True, segments=segments)
    probs = np.asarray(jax.nn.softmax(x @ params["params"]["gate"]["kernel"], -1))
    local, glob = ref_entropy_losses(probs, np.ones((2, 6), bool), np.asarray(segments), 1.2)
    np.testing.assert_allclose(metrics["local_entropy_loss"], local, rtol=1e-5)
    np.testing.assert_allclose(metrics["global_entropy_loss"], glob, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["aux_loss"], 0.5 * local + 2.0 * glob, rtol=1e-5,
                               atol=1e-6)
    grad = jax.grad(aux)(params)["params"]["gate"]["kernel"]
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
  # Off by default: no extra metrics, zero aux for expert choice.
  plain = moe.ExpertChoiceRouter(4)
  _, metrics = plain.apply(plain.init(jax.random.PRNGKey(0), x, train=True), x, train=True)
  assert "local_entropy_loss" not in metrics and float(metrics["aux_loss"]) == 0.0


def test_limoe_ablation_arms_are_valid_configs():
  from experiments.ablation_limoe import get_config
  from imp.model import ModelConfig
  top1, limoe = get_config("top1"), get_config("limoe,smoke")
  assert limoe.total_steps == 12 and top1.total_steps > 12
  args = {}
  for name, config in (("top1", top1), ("limoe", limoe)):
    cfg = ModelConfig.from_config(config.model).moe
    assert cfg.router == "top_k" and cfg.num_experts == 8
    args[name] = dict(cfg.layer_router_args)
    assert moe.TopKRouter(8, **args[name]).k == 1  # every router argument is a real one
  assert args["limoe"]["batch_priority"] and not args["top1"].get("batch_priority", False)
  assert args["limoe"]["global_entropy_threshold"] == pytest.approx(math.log(4))
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    get_config("nope")


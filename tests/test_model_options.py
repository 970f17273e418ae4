"""Model options from the papers, each against a hand-derived case: the M3SAT front end's
per-modality Fourier max_freq / freq_base, and BatchNorm classifier heads (train vs eval
statistics, and how the train step keeps them)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.model import IMPModel, ModelConfig, Request
from imp.model.heads import BATCH_STATS, HeadBatchNorm, with_running_stats
from imp.model.perceiver import PerceiverFrontEnd, fourier_features
from imp.step.state import init_state, logical_axes, make_optimizer
from imp.step.step import StepSpec, make_train_step, make_weighted_sum_step

# ---- Fourier features ------------------------------------------------------------------------


def test_fourier_max_freq_and_freq_base_hand_cases():
  # grid (5,): positions -1, -0.5, 0, 0.5, 1; row 3 is p = 0.5.
  # max_freq 4, linear bands f = linspace(1, 2, 2) = 1, 2: sin(pi/2), sin(pi), cos(pi/2), cos(pi).
  np.testing.assert_allclose(fourier_features((5,), 2, max_freq=4.0)[3],
                             [0.5, 1, 0, 0, -1], atol=1e-6)
  # M3SAT's setting, max_freq 1, base 2, 3 bands: f = 2 ** linspace(1, log2(1/2), 3) = 2, 1, 1/2
  # -> sin(pi), sin(pi/2), sin(pi/4), cos(pi), cos(pi/2), cos(pi/4).
  r = math.sqrt(0.5)
  np.testing.assert_allclose(fourier_features((5,), 3, max_freq=1.0, freq_base=2.0)[3],
                             [0.5, 0, 1, r, -1, 0, r], atol=1e-6)
  # Defaults are today's: max_freq = axis length, linear bands.
  np.testing.assert_array_equal(fourier_features((3, 4), 6),
                                fourier_features((3, 4), 6, None, None))
  np.testing.assert_allclose(fourier_features((7,), 4, max_freq=7.0), fourier_features((7,), 4))
  with pytest.raises(ValueError, match="freq_base=1.0 must be > 1"):
    fourier_features((3,), 2, freq_base=1.0)


def test_front_end_uses_each_modalitys_fourier_settings():
  dims = (("audio", 16), ("image", 4))
  base = PerceiverFrontEnd(16, 3, 2, 32, 2, dims, (1, 2, 2), (4, 4), 40)
  tuned = PerceiverFrontEnd(16, 3, 2, 32, 2, dims, (1, 2, 2), (4, 4), 40,
                            max_freq=(("image", 1.0),), freq_base=(("image", 2.0),))
  image, audio = jnp.ones((1, 8, 8, 1)), jnp.ones((1, 8, 8, 1))
  params = base.init(jax.random.PRNGKey(0), "image", image)
  params = {"params": {**params["params"],
                       **base.init(jax.random.PRNGKey(0), "audio", audio)["params"]}}
  same = lambda m, x: np.allclose(base.apply(params, m, x)[0],  # noqa: E731
                                  tuned.apply(params, m, x)[0], atol=1e-6)
  assert same("audio", audio) and not same("image", image)
  config = ModelConfig.from_config(dict(front_end="perceiver",
                                        perceiver_max_freq={"image": 1, "audio": 1},
                                        perceiver_freq_base=dict(image=2.0)))
  assert config.perceiver_max_freq == (("audio", 1.0), ("image", 1.0))
  assert config.perceiver_freq_base == (("image", 2.0),)
  with pytest.raises(ValueError, match=r"model.perceiver_max_freq.smell: not a modality"):
    ModelConfig.from_config(dict(perceiver_max_freq={"smell": 1}))
  with pytest.raises(ValueError, match=r"model.perceiver_freq_base.image=1 must be a number > 1"):
    ModelConfig.from_config(dict(perceiver_freq_base={"image": 1}))


# ---- BatchNorm heads -------------------------------------------------------------------------


def test_head_batch_norm_hand_case():
  # One class, batch [1, 3]: mean 2, biased var 1 -> train output (x - 2) / sqrt(1 + eps).
  # Running stats from (0, 1), momentum 0.1: mean 0.1 * 2 = 0.2; var 0.9 + 0.1 * 2 = 1.1
  # (unbiased batch variance 2). Eval normalises with those.
  bn = HeadBatchNorm(momentum=0.1, epsilon=1e-5)
  x = jnp.asarray([[1.0], [3.0]])
  params = nn.unbox(bn.init(jax.random.PRNGKey(0), x, train=False))
  y, state = bn.apply(params, x, train=True, mutable=[BATCH_STATS])
  np.testing.assert_allclose(y[:, 0], [-1 / math.sqrt(1 + 1e-5), 1 / math.sqrt(1 + 1e-5)],
                             rtol=1e-6)
  np.testing.assert_allclose(state[BATCH_STATS]["running_mean"], [0.2], rtol=1e-6)
  np.testing.assert_allclose(state[BATCH_STATS]["running_var"], [1.1], rtol=1e-6)
  updated = {"params": with_running_stats(params["params"], state[BATCH_STATS])}
  np.testing.assert_allclose(bn.apply(updated, x, train=False)[:, 0],
                             (np.array([1.0, 3.0]) - 0.2) / math.sqrt(1.1 + 1e-5), rtol=1e-6)
  # Without a mutable "batch_stats" nothing is recorded and nothing fails.
  bn.apply(params, x, train=True)
  with pytest.raises(KeyError, match="batch statistic nope/running_mean has no parameter"):
    with_running_stats(params["params"], {"nope": {"running_mean": jnp.zeros(1)}})


def _bn_setup():
  config = ModelConfig.from_config(dict(width=16, depth=1, num_heads=2, mlp_dim=32, embed_dim=8,
                                        heads=dict(batch_norm=True)))
  model = IMPModel(config, heads=(("a", 3), ("b", 2)), modalities=("image",))
  # Cosine without warm-up: the first step already has the peak rate.
  tx = make_optimizer(dict(name="adamw", learning_rate=1e-2, weight_decay=0.1,
                           schedule="cosine"), 10, logical_axes(model))
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(4, 8, 8, 1)).astype(np.float32),
           "label": np.array([0, 1, 2, 0], np.int32)}
  return model, tx, init_state(model, tx, seed=0), batch


def test_batch_norm_head_statistics_through_the_train_step():
  model, tx, state, batch = _bn_setup()
  head = state.params["classifiers_a"]["batch_norm"]
  np.testing.assert_array_equal(head["running_var"], np.ones(3))
  spec = StepSpec("softmax", "a", ("image",))
  step = jax.jit(make_train_step(model, tx, spec, state, batch))
  state1, metrics = step(state, batch)
  assert "batch_stats" not in metrics and np.isfinite(metrics["loss"])
  # The zero-initialised linear layer gives all-zero logits: batch mean 0 and variance 0, so
  # the running mean stays 0 and the running variance becomes 0.9 * 1 + 0.1 * 0 = 0.9, exactly
  # (AdamW neither moves nor decays the statistics: they have no gradient and are vectors).
  head1 = state1.params["classifiers_a"]["batch_norm"]
  np.testing.assert_array_equal(head1["running_mean"], np.zeros(3))
  np.testing.assert_allclose(head1["running_var"], np.full(3, 0.9), rtol=1e-7)
  assert np.any(state1.params["classifiers_a"]["dense"]["kernel"] != 0)  # the head learns
  # The other head is untouched (AGD), and its statistics too.
  jax.tree.map(np.testing.assert_array_equal, state.params["classifiers_b"],
               state1.params["classifiers_b"])
  # Second step: running stats follow the (now non-zero) logits' batch statistics.
  state2, _ = step(state1, batch)
  dense = state1.params["classifiers_a"]["dense"]
  out = model.apply({"params": state1.params}, batch, spec.request, train=False,
                    method=lambda m, b, r, train: m.encode("image", b["image"], request=r))
  pooled = (out[0] * out[1][..., None]).sum(1) / out[1].sum(1, keepdims=True)
  logits = np.asarray(pooled @ dense["kernel"] + dense["bias"], np.float64)
  want_mean = 0.1 * logits.mean(0)
  want_var = 0.9 * 0.9 + 0.1 * logits.var(0, ddof=1)
  head2 = state2.params["classifiers_a"]["batch_norm"]
  np.testing.assert_allclose(head2["running_mean"], want_mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(head2["running_var"], want_var, rtol=1e-4)
  # Eval uses the running statistics: a one-example batch gives the same logits as in a batch.
  request = spec.request
  full = model.apply({"params": state2.params}, batch, request)["logits/a"]
  one = model.apply({"params": state2.params}, {"image": batch["image"][:1]}, request)["logits/a"]
  np.testing.assert_allclose(one[0], full[0], rtol=1e-5, atol=1e-6)


def test_batch_norm_statistics_in_the_weighted_sum_step_and_the_nonfinite_guard():
  model, tx, state, batch = _bn_setup()
  specs = (StepSpec("softmax", "a", ("image",)),
           StepSpec("softmax", "b", ("image",)))
  batch_b = dict(batch, label=np.array([0, 1, 1, 0], np.int32))
  step = jax.jit(make_weighted_sum_step(model, tx, specs, state, (batch, batch_b)))
  state1, metrics = step(state, (batch, batch_b))
  assert all("batch_stats" not in m for m in metrics)
  for head in ("classifiers_a", "classifiers_b"):
    np.testing.assert_allclose(state1.params[head]["batch_norm"]["running_var"], 0.9, rtol=1e-7)
  bad = dict(batch, image=np.full_like(batch["image"], np.nan))
  single = jax.jit(make_train_step(model, tx, specs[0], state, batch))
  state2, metrics = single(state1, bad)
  assert float(metrics["nonfinite"]) == 1.0
  jax.tree.map(np.testing.assert_array_equal, state1.params, state2.params)


def test_heads_config_errors():
  with pytest.raises(ValueError, match="model.heads.batchnorm is not a head setting"):
    ModelConfig.from_config(dict(heads=dict(batchnorm=True)))
  with pytest.raises(ValueError, match=r"model.heads.momentum=0 must be in \(0, 1\]"):
    ModelConfig.from_config(dict(heads=dict(batch_norm=True, momentum=0)))


# ---- LayerScale and stochastic depth -------------------------------------------------------

X = np.random.default_rng(1).normal(size=(16, 5, 16)).astype(np.float32)
MASK = np.ones((16, 5), bool)


def _block(**kwargs):
  from imp.model.encoder import EncoderBlock
  return EncoderBlock(16, 2, 32, **kwargs)


def test_layer_scale_init_identity_and_unit_gamma():
  plain = _block()
  params = nn.unbox(plain.init(jax.random.PRNGKey(0), X, MASK))["params"]
  scaled = _block(layer_scale=1e-3)
  sp = nn.unbox(scaled.init(jax.random.PRNGKey(0), X, MASK))["params"]
  np.testing.assert_array_equal(sp["attn_scale"], np.full(16, 1e-3, np.float32))
  np.testing.assert_array_equal(sp["mlp_scale"], np.full(16, 1e-3, np.float32))
  ones = dict(params, attn_scale=jnp.ones(16), mlp_scale=jnp.ones(16))
  zeros = dict(params, attn_scale=jnp.zeros(16), mlp_scale=jnp.zeros(16))
  want, _ = plain.apply({"params": params}, X, MASK)
  np.testing.assert_allclose(scaled.apply({"params": ones}, X, MASK)[0], want, rtol=1e-6)
  np.testing.assert_array_equal(scaled.apply({"params": zeros}, X, MASK)[0], X)  # identity


def test_drop_path_keeps_or_scales_each_example():
  from imp.model.encoder import drop_path
  y = np.asarray(drop_path(jnp.ones((2000, 3, 2)), 0.25, jax.random.PRNGKey(0)))
  per_example = y[:, 0, 0]
  assert np.all(y == per_example[:, None, None])  # one decision per example
  assert set(np.unique(per_example)) == {0.0, np.float32(1 / 0.75)}
  assert abs((per_example > 0).mean() - 0.75) < 0.04
  np.testing.assert_array_equal(drop_path(jnp.ones((4, 2)), 0.0, jax.random.PRNGKey(0)), 1.0)


def test_stochastic_depth_branches_are_dropped_or_rescaled_per_example():
  from imp.model.encoder import Mlp, SelfAttention
  rate = 0.5
  block = _block(stochastic_depth=rate, train=True)
  params = nn.unbox(_block().init(jax.random.PRNGKey(0), X, MASK))["params"]
  # Evaluation keeps every branch: the same as a block without stochastic depth.
  np.testing.assert_array_equal(_block(stochastic_depth=rate).apply({"params": params}, X, MASK)[0],
                                _block().apply({"params": params}, X, MASK)[0])
  with pytest.raises(ValueError, match="needs the rng stream 'stochastic_depth'"):
    block.apply({"params": params}, X, MASK)
  got = np.asarray(block.apply({"params": params}, X, MASK,
                               rngs={"stochastic_depth": jax.random.PRNGKey(3)})[0])
  ln = nn.LayerNorm()
  attn = lambda h: SelfAttention(16, 2).apply(  # noqa: E731
      {"params": params["attn"]}, ln.apply({"params": params["ln_attn"]}, h), MASK)
  mlp = lambda h: Mlp(16, 32).apply(  # noqa: E731
      {"params": params["mlp"]}, ln.apply({"params": params["ln_mlp"]}, h))
  seen = set()
  for a_keep in (0, 1):
    x1 = X + a_keep * attn(X) / (1 - rate)
    for m_keep in (0, 1):
      candidate = np.asarray(x1 + m_keep * mlp(x1) / (1 - rate))
      match = np.all(np.isclose(got, candidate, rtol=1e-5, atol=1e-5), axis=(1, 2))
      seen |= {(a_keep, m_keep, b) for b in np.nonzero(match)[0]}
  assert {b for _, _, b in seen} == set(range(16))  # every example is one of the four cases
  assert len({(a, m) for a, m, _ in seen}) >= 3  # and the masks differ between examples


def test_residual_options_through_the_model_and_step():
  from imp.step.step import make_loss_fn
  with pytest.raises(ValueError, match=r"model.stochastic_depth=1.0 must be a drop rate"):
    ModelConfig.from_config(dict(stochastic_depth=1.0))
  with pytest.raises(ValueError, match=r"model.layer_scale=0 must be None \(off\) or a number"):
    ModelConfig.from_config(dict(layer_scale=0))
  base = dict(width=16, depth=2, num_heads=2, mlp_dim=32, embed_dim=8)
  batch = {"image": np.random.default_rng(2).normal(size=(4, 8, 8, 1)).astype(np.float32),
           "label": np.array([0, 1, 2, 0], np.int32)}
  losses = {}
  for name, extra in (("off", {}), ("on", dict(layer_scale=1e-3, stochastic_depth=0.2))):
    model = IMPModel(ModelConfig.from_config(dict(base, **extra)), heads=(("a", 3),),
                     modalities=("image",))
    state = init_state(model, make_optimizer(dict(learning_rate=1e-2), 10), seed=0)
    fn = make_loss_fn(model, StepSpec("softmax", "a", ("image",)))
    losses[name] = float(fn(state.params, batch, state.rng)[0])  # the step passes the stream
    if name == "on":
      assert state.params["encoder"]["layers"]["attn_scale"].shape == (2, 16)  # per layer
      request = Request(features=("image",))
      train = model.apply({"params": state.params}, batch, request, train=True,
                          rngs={"stochastic_depth": jax.random.PRNGKey(0)})
      test = model.apply({"params": state.params}, batch, request)
      assert not np.allclose(train["features/image"], test["features/image"])
  assert np.isfinite(losses["on"])

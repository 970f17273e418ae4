"""MoE inside the encoder: placement, scan over blocks, remat, aux losses and statistics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.analysis.expert_usage import ExpertUsage, plot_expert_usage
from imp.model import Encoder, IMPModel, ModelConfig, MoeConfig
from imp.step.state import init_state, make_optimizer
from imp.step.step import StepSpec, make_train_step, moe_summary

X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 16)), jnp.float32)
MASK = jnp.ones((2, 8), bool)


def _encoder(moe, **kw):
  return Encoder(16, 4, 2, 32, moe=moe, **kw)


def test_moe_every_second_layer_scans_over_blocks_of_two():
  enc = _encoder(MoeConfig(num_experts=4, every=2))
  variables = enc.init(jax.random.PRNGKey(0), X, MASK)
  layers = nn.unbox(variables["params"])["layers"]
  assert set(layers) == {"dense_0", "moe_block"}  # the scanned unit: dense, then MoE
  assert layers["moe_block"]["moe"]["experts"]["wi"].shape == (2, 4, 16, 32)  # [blocks, E, D, H]
  assert "mlp" in layers["dense_0"] and "mlp" not in layers["moe_block"]
  spec = nn.get_partition_spec(variables)["params"]["layers"]["moe_block"]["moe"]["experts"]["wi"]
  assert tuple(spec) == ("layers", "expert", "embed", "mlp")
  out, metrics = enc.apply(variables, X, MASK, train=True)
  assert out.shape == X.shape
  assert metrics["expert_fraction"].shape == (2, 4)  # [moe layers, experts]
  # Expert choice: every expert takes exactly its capacity, so each gets 1/E of the slots.
  np.testing.assert_allclose(metrics["expert_fraction"], 0.25)


def test_depth_must_be_a_multiple_of_every():
  with pytest.raises(ValueError, match=r"model.depth=4 must be a multiple of model.moe.every=3"):
    _encoder(MoeConfig(num_experts=4, every=3)).init(jax.random.PRNGKey(0), X, MASK)
  with pytest.raises(ValueError, match=r"model.moe.router='soft' is not known"):
    MoeConfig.from_config(dict(num_experts=4, router="soft"))
  with pytest.raises(ValueError, match=r"model.moe.experts is not an MoE setting"):
    MoeConfig.from_config(dict(experts=4))


def test_scanned_moe_equals_unrolled_and_remat_keeps_gradients():
  moe = MoeConfig(num_experts=4, every=2)
  scanned = _encoder(moe)
  params = nn.unbox(scanned.init(jax.random.PRNGKey(0), X, MASK))["params"]
  unrolled = _encoder(moe, scan_layers=False)
  flat = dict(params)
  layers = flat.pop("layers")
  for i in range(2):
    flat[f"layer_{i}"] = jax.tree.map(lambda p, i=i: p[i], layers)
  a, ma = scanned.apply({"params": params}, X, MASK, train=True)
  b, mb = unrolled.apply({"params": flat}, X, MASK, train=True)
  np.testing.assert_allclose(a, b, atol=1e-5)
  np.testing.assert_allclose(ma["router_entropy"], mb["router_entropy"], atol=1e-5)

  def grads(policy):
    enc = _encoder(moe, remat_policy=policy)
    return jax.grad(lambda p: enc.apply({"params": p}, X, MASK, train=True)[0].sum())(params)

  reference = grads("none")
  router = reference["layers"]["moe_block"]["moe"]["router"]["gate"]["kernel"]
  assert float(jnp.abs(router).sum()) > 0  # gradients reach the router
  jax.tree.map(lambda r, g: np.testing.assert_allclose(r, g, atol=1e-5), reference, grads("full"))


def test_top_k_aux_loss_is_added_to_the_task_loss():
  moe = dict(num_experts=4, every=2, router="top_k",
             router_args=dict(k=2, switch_loss_weight=0.5))
  cfg = ModelConfig.from_config(dict(width=16, depth=2, num_heads=2, mlp_dim=32, embed_dim=8,
                                     moe=moe))
  model = IMPModel(cfg, heads=(("a", 3),), modalities=("image",))
  tx = make_optimizer(dict(learning_rate=1e-3, warmup_steps=0), 10)
  state = init_state(model, tx, 0)
  batch = {"image": np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32),
           "label": np.array([0, 1, 2, 0], np.int32)}
  step = jax.jit(make_train_step(model, tx, StepSpec("softmax", "a", ("image",)), state, batch))
  _, metrics = step(state, batch)
  # Zero-initialised head: the task loss is ln 3; the switch loss is >= 1 for any routing, so
  # the weighted aux loss (0.5 x switch) is at least 0.5 and is logged separately.
  np.testing.assert_allclose(metrics["loss"], np.log(3), rtol=1e-5)
  assert float(metrics["moe/aux_loss"]) >= 0.5
  assert metrics["moe/image/expert_fraction"].shape == (1, 4)


def test_moe_summary_sums_aux_over_layers_and_modalities():
  calls = {"moe_image": ({"aux_loss": jnp.array([1.0, 2.0]), "dropped_fraction": jnp.zeros(2)},),
           "moe_text": ({"aux_loss": jnp.array([0.5, 0.5]), "dropped_fraction": jnp.ones(2)},)}
  aux, metrics = moe_summary(calls)
  assert float(aux) == 4.0 and float(metrics["moe/aux_loss"]) == 4.0
  np.testing.assert_array_equal(metrics["moe/text/dropped_fraction"], [1.0, 1.0])
  assert moe_summary({})[1] == {}


def test_expert_usage_means_and_heatmap(tmp_path):
  usage = ExpertUsage()
  usage.add("cls image", np.array([[1.0, 0.0]]), count=1)
  usage.add("cls image", np.array([[0.0, 1.0]]), count=3)
  usage.add("nce text", np.array([[0.5, 0.5]]))
  means = usage.means()
  np.testing.assert_allclose(means["cls image"], [[0.25, 0.75]])
  path = plot_expert_usage(means, tmp_path / "usage.png")
  png = path.read_bytes()
  assert len(png) > 1000 and png[:4] == b"\x89PNG"

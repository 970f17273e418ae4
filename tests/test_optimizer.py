"""AdamW's weight decay reaches matrices only, scanned and expert-stacked ones included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.model import IMPModel, ModelConfig, MoeConfig
from imp.step.state import logical_axes, make_optimizer

LR, WD = 0.1, 0.5


def _model():
  moe = MoeConfig.from_config(dict(num_experts=4, router="top_k", router_args=dict(k=2),
                                   condition="modality", attention="shared", every=1))
  config = ModelConfig(width=16, depth=2, num_heads=2, mlp_dim=32, embed_dim=8,
                       text_max_length=6, scan_layers=True, layer_scale=1e-3, moe=moe)
  return IMPModel(config, heads=(("d", 3),), modalities=("image", "text"), num_tasks=2)


def test_adamw_decays_matrices_not_stacked_vectors_norms_or_positions():
  model = _model()
  inputs = {m: model.config.dummy_input(m) for m in model.modalities}
  params = nn.unbox(model.init(jax.random.PRNGKey(0), inputs, model.init_request())["params"])
  tx = make_optimizer(dict(name="adamw", learning_rate=LR, weight_decay=WD, warmup_steps=0,
                           schedule="cosine"), 10, logical_axes(model))
  # With zero gradients Adam's part of the update is 0 / (0 + eps) = 0, so what is left is
  # AdamW's decoupled decay: -lr * wd * p where the mask holds, exactly 0 elsewhere.
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  layers = params["encoder"]["layers"]["moe_block"]
  got = updates["encoder"]["layers"]["moe_block"]
  decayed = {"expert kernel [layers, expert, embed, mlp]": ("moe", "experts", "wi"),
             "router kernel [layers, embed, expert]": ("moe", "router", "gate", "kernel"),
             "attention expert kernel": ("attn", "query", "kernel")}
  kept = {"LayerNorm scale [layers, embed]": ("ln_attn", "scale"),
          "LayerScale [layers, embed]": ("mlp_scale",),
          "expert bias [layers, expert, mlp]": ("moe", "experts", "wi_bias"),
          "attention expert bias": ("attn", "query", "bias")}

  def leaf(tree, path):
    for key in path:
      tree = tree[key]
    return np.asarray(tree)

  for name, path in decayed.items():
    np.testing.assert_allclose(leaf(got, path), -LR * WD * leaf(layers, path), rtol=1e-6,
                               err_msg=name)
    assert np.abs(leaf(got, path)).max() > 0, name
  for name, path in kept.items():
    np.testing.assert_array_equal(leaf(got, path), 0.0, err_msg=name)
  # Outside the layers: embedding tables and heads decay; position tables, the final norm,
  # head biases and the logit temperature do not.
  np.testing.assert_allclose(updates["classifiers_d"]["kernel"],
                             -LR * WD * params["classifiers_d"]["kernel"], rtol=1e-6)
  np.testing.assert_allclose(updates["embedders_text"]["token"]["embedding"],
                             -LR * WD * params["embedders_text"]["token"]["embedding"], rtol=1e-6)
  for name, value in (("text positions", updates["embedders_text"]["pos"]["table"]),
                      ("image positions", updates["embedders_vision"]["pos"]["table"]),
                      ("final norm", updates["encoder"]["ln_final"]["scale"]),
                      ("head bias", updates["classifiers_d"]["bias"]),
                      ("temperature", updates["log_logit_scale"])):
    np.testing.assert_array_equal(value, 0.0, err_msg=name)


def test_weight_decay_without_the_models_axes_is_refused():
  with pytest.raises(ValueError, match="optimizer.weight_decay: make_optimizer needs"):
    make_optimizer(dict(name="adamw", learning_rate=1e-3, weight_decay=0.05), 10)
  # Without decay AdamW needs no axes.
  make_optimizer(dict(name="adamw", learning_rate=1e-3), 10)

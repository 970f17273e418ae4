"""The precision policy (`model.dtype`, `model.param_dtype`): bf16 steps track f32 steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.model import IMPModel, ModelConfig, MoeConfig
from imp.step.state import init_state, make_optimizer
from imp.step.step import StepSpec, make_train_step

MOES = {"dense": None, "expert_choice": dict(num_experts=4),
        "token_choice": dict(num_experts=4, router="top_k", router_args=dict(k=2))}
# bfloat16 keeps 8 mantissa bits (relative spacing 2^-8 ~ 0.4%); over two layers, a softmax
# cross-entropy and an NCE loss the dense and expert-choice losses agree to about 1%. Token
# choice also flips near-tied top-k choices (and so which tokens overflow an expert), which
# moved its loss by 2.7% on this batch.
LOSS_RTOL = {"dense": 2e-2, "expert_choice": 2e-2, "token_choice": 5e-2}


def _model(moe, dtype, param_dtype="float32"):
  config = ModelConfig(width=16, depth=2, num_heads=2, mlp_dim=32, embed_dim=8,
                       text_max_length=8, moe=MoeConfig.from_config(moe), dtype=dtype,
                       param_dtype=param_dtype)
  return IMPModel(config, heads=(("a", 5),), modalities=("image", "text"))


def _batch():
  rng = np.random.default_rng(3)
  return {"image": rng.normal(size=(8, 8, 8, 1)).astype(np.float32),
          "label": rng.integers(0, 5, 8).astype(np.int32),
          "text": rng.integers(2, 200, (8, 6)).astype(np.int32)}


def _loss(model, steps=3):
  tx = make_optimizer(dict(name="adam", learning_rate=1e-3, warmup_steps=0,
                           schedule="constant"), 100)
  state = init_state(model, tx, seed=0)
  batch = _batch()
  spec = StepSpec("sum", "a", ("image", "text"),
                  args=(("objectives", ("softmax", "nce")), ("weights", (1.0, 1.0))))
  step = jax.jit(make_train_step(model, tx, spec, state, batch))  # eager would compile op by op
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    assert not metrics["nonfinite"]
    losses.append(float(metrics["loss"]))
  return losses, state


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MOES))
def test_bf16_step_loss_tracks_the_f32_step(name):
  f32, _ = _loss(_model(MOES[name], "float32"))
  bf16, state = _loss(_model(MOES[name], "bfloat16"))
  # The first update has a zero learning rate (the schedule starts at step 0); the third
  # step's loss is after a real update.
  assert f32[2] != f32[0]
  np.testing.assert_allclose(bf16, f32, rtol=LOSS_RTOL[name])
  # Parameters and both Adam moments stay float32 under a bf16 computation.
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(MOES))
def test_bf16_policy_computes_in_bf16_and_pools_in_f32(name):
  model = _model(MOES[name], "bfloat16")
  batch = _batch()
  variables = model.init(jax.random.PRNGKey(0), {k: batch[k] for k in ("image", "text")},
                         model.init_request())
  tokens, _ = model.apply(variables, "image", batch["image"], method=model.encode)
  assert tokens.dtype == jnp.bfloat16
  out = model.apply(variables, {k: batch[k] for k in ("image", "text")}, model.init_request())
  for key, value in out.items():  # head logits, normalised embeddings, the temperature
    assert value.dtype == jnp.float32, key


def test_bf16_parameters_are_stored_in_bf16():
  model = _model(MOES["token_choice"], "bfloat16", "bfloat16")
  batch = _batch()
  variables = model.init(jax.random.PRNGKey(0), {k: batch[k] for k in ("image", "text")},
                         model.init_request())
  dtypes = {str(leaf.dtype) for leaf in jax.tree.leaves(variables["params"])}
  assert "bfloat16" in dtypes


def test_precision_config_errors():
  with pytest.raises(ValueError, match=r"model.dtype='float16' is not known; valid: "
                                       r"'float32', 'bfloat16'"):
    ModelConfig.from_config(dict(dtype="float16"))
  with pytest.raises(ValueError, match=r"model.param_dtype='f32' is not known"):
    ModelConfig.from_config(dict(param_dtype="f32"))


@pytest.mark.slow
def test_bf16_parameters_keep_float32_adam_moments():
  model = _model(MOES["dense"], "bfloat16", "bfloat16")
  losses, state = _loss(model)
  assert np.isfinite(losses).all() and losses[2] != losses[0]
  # Only the contrastive temperature stays float32 (routers and BatchNorm heads would too).
  f32 = [jax.tree_util.keystr(path) for path, p in jax.tree_util.tree_leaves_with_path(
      state.params) if p.dtype != jnp.bfloat16]
  assert f32 == ["['log_logit_scale']"]
  moments = [leaf for leaf in jax.tree.leaves(state.opt_state)
             if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim]
  assert moments and {str(m.dtype) for m in moments} == {"float32"}

"""The one attention function (`imp.model.attention.attend`) against the einsum path it replaced."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.model import (
  IMPModel,
  ModelConfig,
  MoeConfig,
  Request,
  attention_moe,
  conditions,
  encoder,
  perceiver,
)
from imp.model.attention import attend, check_attention_impl

RNG = np.random.default_rng(0)


def einsum_attention(q, k, v, mask=None, *, impl="xla"):
  """The hand-written path the model used before `attend`: q [B, T, N, H], k, v [B, S, N, H],
  mask bool [B, S] -> [B, T, N, H]."""
  del impl
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  if mask is not None:
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _qkv(b=3, t=5, s=7, n=2, h=4):
  return [jnp.asarray(RNG.normal(size=shape), jnp.float32)
          for shape in ((b, t, n, h), (b, s, n, h), (b, s, n, h))]


def test_attend_matches_einsum_with_and_without_a_mask():
  q, k, v = _qkv()
  np.testing.assert_allclose(attend(q, k, v), einsum_attention(q, k, v), atol=1e-5)
  mask = jnp.asarray(RNG.random((3, 7)) < 0.6).at[1].set(False).at[2, 0].set(True)
  out = attend(q, k, v, mask)
  np.testing.assert_allclose(out, einsum_attention(q, k, v, mask), atol=1e-5)
  # Masked keys carry no weight: changing their values leaves the output alone.
  v2 = jnp.where(mask[:, :, None, None], v, 1e3)
  np.testing.assert_allclose(attend(q, k, v2, mask)[0], out[0], atol=1e-5)
  # A query with every key masked gets the mean of the values (uniform weights).
  np.testing.assert_allclose(out[1], jnp.broadcast_to(v[1].mean(0), out[1].shape), atol=1e-5)


def test_attend_hand_case_one_head():
  # Two keys with logits 0 and log(3)*sqrt(1): weights 1/4, 3/4.
  q = jnp.ones((1, 1, 1, 1))
  k = jnp.asarray([0.0, np.log(3.0)]).reshape(1, 2, 1, 1)
  v = jnp.asarray([4.0, 8.0]).reshape(1, 2, 1, 1)
  np.testing.assert_allclose(attend(q, k, v).ravel(), [7.0], rtol=1e-6)
  np.testing.assert_allclose(attend(q, k, v, jnp.asarray([[True, False]])).ravel(), [4.0])


def _patch_einsum(monkeypatch):
  for module in (encoder, attention_moe, conditions, perceiver):
    monkeypatch.setattr(module, "attend", einsum_attention)


def _outputs(model, inputs, request, variables, train):
  rngs = {k: jax.random.PRNGKey(1) for k in ("droptoken", "router", "stochastic_depth")}
  return model.apply(variables, inputs, request, train=train, drop_token=0.5 if train else 0.0,
                     rngs=rngs)


@pytest.mark.parametrize("moe", [
    None,
    dict(num_experts=4, attention="shared", condition="context"),
    dict(num_experts=4, router="top_k", router_args=dict(k=2), attention="qkv"),
])
def test_model_equals_the_einsum_path_with_masks_and_droptoken(monkeypatch, moe):
  config = ModelConfig(width=16, depth=2, num_heads=2, mlp_dim=32, embed_dim=8,
                       moe=MoeConfig.from_config(moe))
  request = Request(embed=("image", "text"), features=("image", "text"))
  model = IMPModel(config, heads=())
  text = jnp.asarray([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]], jnp.int32)  # padded: masked keys
  inputs = {"image": jnp.asarray(RNG.normal(size=(2, 8, 8, 1)), jnp.float32), "text": text}
  variables = model.init(jax.random.PRNGKey(0), inputs, model.init_request())
  fused = {train: _outputs(model, inputs, request, variables, train) for train in (False, True)}
  _patch_einsum(monkeypatch)
  for train in (False, True):  # train=True drops half the image tokens (DropToken)
    reference = _outputs(model, inputs, request, variables, train)
    for key in ("features/image", "features/text", "embedding/image"):
      np.testing.assert_allclose(fused[train][key], reference[key], atol=1e-5, err_msg=key)


def test_perceiver_equals_the_einsum_path(monkeypatch):
  config = ModelConfig(width=16, depth=1, num_heads=2, mlp_dim=32, embed_dim=8,
                       front_end="perceiver", perceiver_latents=5, perceiver_bands=3)
  request = Request(embed=("image", "text"), features=("image", "text"))
  model = IMPModel(config)
  inputs = {"image": jnp.asarray(RNG.normal(size=(2, 8, 8, 1)), jnp.float32),
            "text": jnp.asarray([[5, 6, 0], [7, 0, 0]], jnp.int32)}
  variables = model.init(jax.random.PRNGKey(0), inputs, model.init_request())
  fused = model.apply(variables, inputs, request)
  _patch_einsum(monkeypatch)
  reference = model.apply(variables, inputs, request)
  for key in ("features/image", "features/text", "embedding/image"):
    np.testing.assert_allclose(fused[key], reference[key], atol=1e-5, err_msg=key)


def test_attention_impl_config_errors():
  assert ModelConfig.from_config({}).attention_impl == "xla"
  with pytest.raises(ValueError, match=r"model.attention_impl='flash' is not known; valid: "
                                       r"'xla', 'cudnn'"):
    ModelConfig.from_config(dict(attention_impl="flash"))
  if not any(d.platform == "gpu" for d in jax.devices()):
    with pytest.raises(ValueError, match=r"model.attention_impl='cudnn' needs a GPU"):
      check_attention_impl("cudnn")

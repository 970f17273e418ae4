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
ON_GPU = any(d.platform == "gpu" for d in jax.devices())
gpu_only = pytest.mark.skipif(not ON_GPU, reason="cuDNN's fused attention runs only on a GPU")


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
                                       r"'auto', 'xla', 'cudnn'"):
    ModelConfig.from_config(dict(attention_impl="flash"))
  if not ON_GPU:
    with pytest.raises(ValueError, match=r"model.attention_impl='cudnn' needs a GPU"):
      check_attention_impl("cudnn")


# bfloat16 keeps 8 mantissa bits: two implementations that sum in different orders differ by
# a few units of 2^-8 on outputs of order 1.
BF16_ATOL = 3e-2


def _as_f32(x):
  return np.asarray(jnp.asarray(x, jnp.float32))


@gpu_only
def test_cudnn_attend_matches_xla_in_bf16():
  """IMP-B's attention shape (256 tokens, 12 heads of 64) in bf16, with and without a mask."""
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(4, 256, 12, 64)), jnp.bfloat16) for _ in range(3))
  mask = jnp.asarray(rng.random((4, 256)) < 0.7).at[:, 0].set(True)
  for m in (None, mask):
    np.testing.assert_allclose(_as_f32(attend(q, k, v, m, impl="cudnn")),
                               _as_f32(attend(q, k, v, m, impl="xla")), atol=BF16_ATOL)


@gpu_only
def test_cudnn_attend_fully_masked_query_gets_the_mean_of_the_values():
  """`attend`'s contract for a query whose keys are all masked holds for cuDNN too."""
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 16, 2, 64)), jnp.bfloat16) for _ in range(3))
  mask = jnp.ones((2, 16), bool).at[1].set(False)
  out = _as_f32(attend(q, k, v, mask, impl="cudnn"))
  np.testing.assert_allclose(out[1], np.broadcast_to(_as_f32(v[1]).mean(0), out[1].shape),
                             atol=BF16_ATOL)


def _forward_and_grad(impl, dtype):
  """Features and the parameter gradient of a fixed random linear read-out of the image and
  (padded) text features, for a 2-layer encoder with `attention_impl=impl`."""
  inputs = {"image": jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 1)),
                                 jnp.float32),
            "text": jnp.asarray([[5, 6, 7, 0, 0, 0, 0, 0], [8, 9, 0, 0, 0, 0, 0, 0]], jnp.int32)}
  request = Request(embed=(), features=("image", "text"))
  config = ModelConfig(width=128, depth=2, num_heads=2, mlp_dim=256, embed_dim=32,
                       dtype=dtype, attention_impl=impl)
  model = IMPModel(config, heads=())
  variables = model.init(jax.random.PRNGKey(0), inputs, model.init_request())

  def loss(params):
    # Not a function of the L2-normalised embeddings: their squared norm is constant, and its
    # gradient would be rounding noise.
    out = model.apply(dict(variables, params=params), inputs, request)
    readout = np.random.default_rng(4)
    return sum(jnp.mean(out[k].astype(jnp.float32) * readout.normal(size=out[k].shape))
               for k in ("features/image", "features/text"))

  # jitted: eager dispatch compiles each of the model's ops on its own, minutes on a GPU
  outputs = jax.jit(lambda v: model.apply(v, inputs, request))(variables)
  return outputs, jax.jit(jax.grad(loss))(variables["params"])


def _assert_close_in_bf16(outputs, grads, ref_outputs, ref_grads):
  for key in ("features/image", "features/text"):
    np.testing.assert_allclose(_as_f32(outputs[key]), _as_f32(ref_outputs[key]),
                               atol=BF16_ATOL, err_msg=key)
  # Each leaf relative to its largest entry, floored at 1e-2 of the largest in the tree: the
  # key bias's gradient is zero in exact arithmetic (softmax ignores a per-query constant) and
  # only rounding noise in floating point. bf16 against f32 moved no leaf by more than 0.021;
  # on an H200 the test with a 1e-3 floor failed at the key bias: cuDNN's entries against
  # XLA's differed by up to 8.6e-5 of the tree's largest gradient, over the 5e-5 it allowed.
  floor = 1e-2 * max(float(np.abs(_as_f32(b)).max()) for b in jax.tree.leaves(ref_grads))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads),
                          strict=True):
    scale = max(float(np.abs(_as_f32(b)).max()), floor)
    np.testing.assert_allclose(_as_f32(a) / scale, _as_f32(b) / scale, atol=5e-2,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_bf16_forward_and_gradient_track_f32_within_the_cudnn_tolerance():
  """The tolerance the cuDNN test below uses holds for what bf16 alone changes (XLA, CPU)."""
  _assert_close_in_bf16(*_forward_and_grad("xla", "bfloat16"), *_forward_and_grad("xla", "float32"))


@gpu_only
def test_cudnn_model_matches_xla_in_bf16_forward_and_gradient():
  """The whole encoder with `model.attention_impl="cudnn"` against "xla", padded text included:
  the same features and the same gradient, up to bf16 rounding."""
  _assert_close_in_bf16(*_forward_and_grad("cudnn", "bfloat16"),
                        *_forward_and_grad("xla", "bfloat16"))

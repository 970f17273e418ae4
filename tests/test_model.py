"""Embedders, positions, DropToken and the encoder (scan, remat) on hand-checkable cases."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.model import Encoder, IMPModel, ModelConfig, Request, drop_tokens
from imp.model.embedders import GridPositions, VisionEmbedder, normalize_pixels, patchify
from imp.step.state import init_state, logical_axes, make_optimizer


def test_patchify_matches_a_loop_reference():
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  patches, grid = patchify(jnp.asarray(x), (2, 3))
  assert grid == (2, 2) and patches.shape == (2, 2, 2, 2 * 3 * 3)
  for b in range(2):
    for i in range(2):
      for j in range(2):
        ref = x[b, 2 * i:2 * i + 2, 3 * j:3 * j + 3, :].reshape(-1)
        np.testing.assert_array_equal(patches[b, i, j], ref)
  with pytest.raises(ValueError, match="not divisible by patch"):
    patchify(jnp.zeros((1, 5, 6, 1)), (2, 3))


def test_vision_embedder_shapes_image_and_video():
  emb = VisionEmbedder(width=8, patch=(2, 4, 4), base_grid=(2, 2, 2))
  image = jnp.ones((3, 8, 8, 1))
  params = emb.init(jax.random.PRNGKey(0), image)
  # An image repeats to fill the 2-frame temporal patch: 1 x 2 x 2 tokens.
  assert emb.apply(params, image).shape == (3, 4, 8)
  # A 4-frame video at twice the resolution: 2 x 4 x 4 tokens, positions resized.
  assert emb.apply(params, jnp.ones((3, 4, 16, 16, 1))).shape == (3, 32, 8)


def test_normalize_pixels_hand_cases():
  pixels = jnp.array([0, 51, 255], jnp.uint8)  # 0 -> -1, 51 -> 51 / 127.5 - 1 = -0.6, 255 -> 1
  np.testing.assert_allclose(normalize_pixels(pixels, jnp.float32), [-1.0, -0.6, 1.0], atol=1e-7)
  assert normalize_pixels(pixels, jnp.bfloat16).dtype == jnp.bfloat16
  floats = jnp.array([-0.5, 0.25])  # float input is taken as already in [-1, 1]
  np.testing.assert_array_equal(normalize_pixels(floats, jnp.float32), floats)


@pytest.mark.parametrize("front_end", ["patch", "perceiver"])
def test_uint8_pixels_are_normalised_inside_the_model(front_end):
  config = ModelConfig(width=16, depth=1, num_heads=2, mlp_dim=32, embed_dim=8,
                       front_end=front_end, perceiver_latents=5, perceiver_bands=3)
  model = IMPModel(config)
  pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
  inputs = {"image": pixels, "text": jnp.asarray([[5, 6, 0], [7, 0, 0]], jnp.int32)}
  variables = model.init(jax.random.PRNGKey(0), inputs, model.init_request())
  request = Request(features=("image",))
  from_uint8 = model.apply(variables, inputs, request)["features/image"]
  floats = dict(inputs, image=jnp.asarray(pixels, jnp.float32) / 127.5 - 1.0)
  from_floats = model.apply(variables, floats, request)["features/image"]
  np.testing.assert_allclose(from_uint8, from_floats, atol=1e-6)


def test_positions_resize_to_variant_grid_and_keep_base():
  pos = GridPositions(base_grid=(2, 2), width=1)
  params = pos.init(jax.random.PRNGKey(0), (2, 2))
  table = nn.unbox(params)["params"]["table"]
  np.testing.assert_array_equal(pos.apply(params, (2, 2)), table)
  up = pos.apply(params, (4, 4))
  assert up.shape == (4, 4, 1)
  # Linear resize with half-pixel centres keeps the corners of the table.
  np.testing.assert_allclose(up[0, 0], table[0, 0], rtol=1e-6)
  np.testing.assert_allclose(up[3, 3], table[1, 1], rtol=1e-6)


def test_text_mask_and_audio_shapes():
  cfg = ModelConfig(width=16, depth=1, num_heads=2, mlp_dim=32, embed_dim=8,
                    audio_patch=(4, 4), audio_base_grid=(4, 2), text_max_length=8)
  model = IMPModel(cfg, heads=(("d", 3),), modalities=("audio", "text"))
  inputs = {m: cfg.dummy_input(m, 2) for m in ("audio", "text")}
  variables = model.init(jax.random.PRNGKey(0), inputs, model.init_request())
  text = jnp.array([[5, 6, 1, 0, 0], [7, 1, 0, 0, 0]])
  tokens, mask = model.apply(variables, "text", text, method=IMPModel.encode)
  assert tokens.shape == (2, 5, 16)
  np.testing.assert_array_equal(mask, text != 0)
  spec = jnp.ones((2, 16, 8, 1))  # 16 time bins x 8 mel bins -> 4 x 2 patches
  tokens, mask = model.apply(variables, "audio", spec, method=IMPModel.encode)
  assert tokens.shape == (2, 8, 16) and bool(mask.all())
  # Padding does not change a text's pooled features.
  out = model.apply(variables, {"text": text}, Request(features=("text",)))
  padded = model.apply(variables, {"text": jnp.pad(text, ((0, 0), (0, 3)))},
                       Request(features=("text",)))
  np.testing.assert_allclose(out["features/text"], padded["features/text"], atol=1e-5)


def test_drop_tokens_keeps_a_random_subset_in_order():
  tokens = jnp.arange(2 * 8, dtype=jnp.float32).reshape(2, 8, 1)
  mask = jnp.ones((2, 8), bool)
  kept, kept_mask = drop_tokens(tokens, mask, 0.75, jax.random.PRNGKey(0))
  assert kept.shape == (2, 2, 1) and kept_mask.shape == (2, 2)
  for b in range(2):
    values = np.asarray(kept[b, :, 0])
    assert np.all(np.diff(values) > 0)  # original order kept
    assert set(values) <= set(np.asarray(tokens[b, :, 0]))  # real tokens of that example
  other, _ = drop_tokens(tokens, mask, 0.75, jax.random.PRNGKey(1))
  assert not np.array_equal(kept, other)
  same, _ = drop_tokens(tokens, mask, 0.0, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(same, tokens)


def test_droptoken_only_in_training():
  cfg = ModelConfig(width=16, depth=1, num_heads=2, mlp_dim=32, embed_dim=8)
  model = IMPModel(cfg, heads=(("d", 3),), modalities=("image",))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), {"image": x}, model.init_request())
  rngs = {"droptoken": jax.random.PRNGKey(3)}
  train = model.apply(variables, "image", x, train=True, drop_token=0.5, rngs=rngs,
                      method=IMPModel.encode)[0]
  test = model.apply(variables, "image", x, train=False, drop_token=0.5,
                     method=IMPModel.encode)[0]
  assert train.shape == (2, 8, 16) and test.shape == (2, 16, 16)


def _encoder_params_unscanned(scanned, depth):
  """Slices the stacked `layers` params into layer_0 ... layer_{depth-1}."""
  params = dict(scanned)
  layers = params.pop("layers")
  for i in range(depth):
    params[f"layer_{i}"] = jax.tree.map(lambda p, i=i: p[i], layers)
  return params


def test_scan_equals_unrolled_and_remat_keeps_gradients():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 16)), jnp.float32)
  mask = jnp.array([[True] * 5, [True, True, True, False, False]])
  scanned = Encoder(16, 3, 2, 32, scan_layers=True)
  params = nn.unbox(scanned.init(jax.random.PRNGKey(0), x, mask))["params"]
  unrolled = Encoder(16, 3, 2, 32, scan_layers=False)
  flat = {"params": _encoder_params_unscanned(params, 3)}
  np.testing.assert_allclose(scanned.apply({"params": params}, x, mask)[0],
                             unrolled.apply(flat, x, mask)[0], atol=1e-5)

  def grads(policy):
    enc = Encoder(16, 3, 2, 32, scan_layers=True, remat_policy=policy)
    return jax.grad(lambda p: enc.apply({"params": p}, x, mask)[0].sum())(params)

  reference = grads("none")
  for policy in ("full", "dots_saveable", "save_block_outputs"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 reference, grads(policy))
  with pytest.raises(ValueError, match="model.remat_policy='some' is not known"):
    Encoder(16, 1, 2, 32, remat_policy="some").init(jax.random.PRNGKey(0), x, mask)


# 8: more than the 3 layers, one loop iteration; "auto" on CPU: the depth, the same.
@pytest.mark.parametrize("unroll", [2, 8, "auto"])
def test_scan_unroll_keeps_the_parameters_and_the_outputs(unroll):
  """nn.scan's unroll changes the compiled loop, not the math or the [layers, ...] layout."""
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 16)), jnp.float32)
  mask = jnp.array([[True] * 5, [True, True, True, False, False]])
  rolled = Encoder(16, 3, 2, 32, scan_layers=True, scan_unroll=1)
  params = nn.unbox(rolled.init(jax.random.PRNGKey(0), x, mask))["params"]
  unrolled = Encoder(16, 3, 2, 32, scan_layers=True, scan_unroll=unroll)
  assert jax.tree.map(np.shape, nn.unbox(unrolled.init(jax.random.PRNGKey(0), x, mask))[
      "params"]) == jax.tree.map(np.shape, params)
  loss = lambda enc, p: enc.apply({"params": p}, x, mask)[0].sum()  # noqa: E731
  np.testing.assert_allclose(loss(unrolled, params), loss(rolled, params), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               jax.grad(lambda p: loss(unrolled, p))(params),
               jax.grad(lambda p: loss(rolled, p))(params))
  with pytest.raises(ValueError, match=r"model.scan_unroll=0: expects .auto. or an int >= 1"):
    Encoder(16, 3, 2, 32, scan_unroll=0).init(jax.random.PRNGKey(0), x, mask)


def test_scan_unroll_auto_is_the_whole_scan_on_cpu_and_one_iteration_elsewhere(monkeypatch):
  assert ModelConfig.from_config({"depth": 6}).scan_unroll == 6  # this CPU
  assert ModelConfig.from_config({"depth": 6, "scan_unroll": 2}).scan_unroll == 2
  for backend in ("gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert ModelConfig.from_config({"depth": 6}).scan_unroll == 1
  with pytest.raises(ValueError, match=r"model.scan_unroll='all': expects 'auto' or an int"):
    ModelConfig.from_config({"scan_unroll": "all"})


def test_every_parameter_has_logical_axes():
  cfg = ModelConfig(width=16, depth=2, num_heads=2, mlp_dim=32, embed_dim=8)
  model = IMPModel(cfg, heads=(("d", 3),), modalities=("image", "text"))
  specs = logical_axes(model)
  shapes = jax.eval_shape(lambda: init_state(model, make_optimizer(
      dict(learning_rate=1e-3), 10), 0).params)
  kernel = specs["encoder"]["layers"]["mlp"]["wi"]["kernel"]
  assert tuple(kernel) == ("layers", "embed", "mlp")
  assert tuple(specs["classifiers_d"]["kernel"]) == ("embed", "classes")
  # Every parameter names an axis for each of its dimensions.
  for spec, shape in zip(jax.tree.leaves(specs, is_leaf=lambda s: isinstance(
      s, jax.sharding.PartitionSpec)), jax.tree.leaves(shapes), strict=True):
    assert len(spec) == len(shape.shape), (spec, shape.shape)

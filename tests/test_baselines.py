"""The non-AGD baselines compute the gradients they claim to (imp/train/baselines.py)."""

import jax
import numpy as np
import optax
import pytest

from imp.model import IMPModel, ModelConfig
from imp.step.state import init_state, make_optimizer
from imp.step.step import StepSpec, make_loss_fn
from imp.train import baselines

TINY = dict(width=16, depth=1, num_heads=2, mlp_dim=32, embed_dim=8, text_max_length=8)
CLS = StepSpec("softmax", "digits", ("image",))
NCE = StepSpec("nce", "digits", ("image", "text"), args=(("positives", "same_label"),))


def _setup():
  model = IMPModel(ModelConfig.from_config(TINY), heads=(("digits", 10),),
                   modalities=("image", "text"))
  tx = make_optimizer(dict(name="adam", learning_rate=1e-2, warmup_steps=0), 10)
  return model, tx, init_state(model, tx, seed=0)


def _batch(size, resolution, text=None, seed=0):
  rng = np.random.default_rng(seed)
  batch = {"image": rng.normal(size=(size, resolution, resolution, 1)).astype(np.float32),
           "label": rng.integers(0, 10, size).astype(np.int32)}
  if text:
    batch["text"] = rng.integers(1, 256, (size, text)).astype(np.int32)
  return batch


def _close(a, b, atol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-4)


def test_accumulated_gradient_is_the_sum_of_per_task_gradients():
  model, _, state = _setup()
  # SGD with learning rate 1 makes the update the negative gradient itself (Adam's first step
  # would hide a wrong scale), so the step's parameter change is the accumulated gradient.
  tx = optax.sgd(1.0)
  state = state.replace(opt_state=tx.init(state.params))
  specs = (CLS, NCE)
  batches = (_batch(4, 8), _batch(2, 16, text=6, seed=1))
  new_state, metrics = jax.jit(baselines.make_accumulation_step(model, tx, specs))(
      state, batches)
  # Reference: each task's gradient on its own, from separate programs, summed in NumPy.
  rng = jax.random.fold_in(state.rng, state.step)
  reference, ref_losses = None, []
  for i, (spec, batch) in enumerate(zip(specs, batches, strict=True)):
    (_, (loss, _)), g = jax.jit(jax.value_and_grad(make_loss_fn(model, spec), has_aux=True))(
        state.params, batch, jax.random.fold_in(rng, i))
    g = jax.tree.map(np.asarray, g)
    reference = g if reference is None else jax.tree.map(np.add, reference, g)
    ref_losses.append(float(loss))
  _close(jax.tree.map(np.subtract, state.params, new_state.params), reference)
  assert float(optax.tree.norm(reference)) > 0
  assert int(new_state.step) == 1
  np.testing.assert_allclose(np.asarray(metrics["task_losses"]), ref_losses, rtol=1e-5)


def test_mixed_batch_of_one_unpadded_task_has_the_agd_loss():
  model, _, state = _setup()
  batch = _batch(4, 8, text=6)
  mixed, layout = baselines.mix_batches((NCE,), (batch,))
  rng = jax.random.PRNGKey(0)
  _, losses = baselines.mixed_loss_fn(model, layout)(state.params, mixed, rng)
  _, (agd_loss, _) = make_loss_fn(model, NCE)(state.params, batch, rng)
  np.testing.assert_allclose(float(losses[0]), float(agd_loss), rtol=1e-5)


def test_masked_padding_does_not_change_the_loss_or_gradient():
  model, _, state = _setup()
  specs = (CLS, NCE)
  batches = (_batch(4, 4), _batch(2, 8, text=6, seed=1))
  mixed, layout = baselines.mix_batches(specs, batches)
  assert mixed["image"].shape == (6, 8, 8, 1) and mixed["text"].shape == (2, 6)
  assert layout.rows == ((("image", 0, 4),), (("image", 4, 6), ("text", 0, 2)))
  noisy = dict(mixed, image=mixed["image"].copy())
  noisy["image"][:4, 4:, :, :] = 100.0  # the first task's padding: rows 4-7 ...
  noisy["image"][:4, :, 4:, :] = -50.0  # ... and columns 4-7 of its 4x4 images
  loss_fn = jax.jit(jax.value_and_grad(baselines.mixed_loss_fn(model, layout), has_aux=True))
  (total, losses), grads = loss_fn(state.params, mixed, jax.random.PRNGKey(0))
  (total_noisy, losses_noisy), grads_noisy = loss_fn(state.params, noisy, jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(losses_noisy), np.asarray(losses), rtol=1e-6)
  _close(grads_noisy, grads)
  # Changing the real pixels of the first task does change the gradient (the test can fail;
  # its loss alone cannot show it: the zero-initialised classifier predicts uniformly).
  real = dict(mixed, image=mixed["image"].copy())
  real["image"][:4, :4, :4, :] += 1.0
  _, grads_real = loss_fn(state.params, real, jax.random.PRNGKey(0))
  head = lambda g: np.asarray(g["classifiers_digits"]["kernel"])  # noqa: E731
  assert np.abs(head(grads_real) - head(grads)).max() > 1e-4


def test_image_token_mask_by_hand():
  # 4x4 inputs in 2x2 patches: a 2x2 grid numbered (0,0),(0,1),(1,0),(1,1). A 2x4 real image
  # covers grid row 0 only; a 4x2 image covers column 0 only; 4x4 covers all.
  extent = np.array([[2, 4], [4, 2], [4, 4]], np.int32)
  mask = np.asarray(baselines.image_token_mask(extent, (4, 4), (2, 2)))
  np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]])


def test_mixed_batching_rejects_other_modalities_by_name():
  spec = StepSpec("softmax", "speech", ("audio",))
  with pytest.raises(ValueError, match="reads 'audio'"):
    baselines.mix_batches((spec,), ({"audio": np.zeros((2, 8, 8, 1)), "label": np.zeros(2)},))


def test_useful_tokens_counts_each_task_at_its_own_shape():
  # 8x8 image in 2x2 patches = 16 tokens, plus 6 text tokens, for 2 examples: 44.
  assert baselines.useful_tokens(NCE, _batch(2, 8, text=6), (1, 2, 2)) == 44

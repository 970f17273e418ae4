"""Tests for imp.objectives.losses against hand-derived values and NumPy references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.objectives import losses


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max()
  return x - np.log(np.sum(np.exp(x)))


def _np_nce(a: np.ndarray, b: np.ndarray, scale: float, positives: np.ndarray | None) -> float:
  """Float64 loop reference for symmetric (multi-positive) InfoNCE."""
  a = a.astype(np.float64)
  b = b.astype(np.float64)
  n = a.shape[0]
  if positives is None:
    positives = np.eye(n, dtype=bool)
  logits = scale * a @ b.T
  rows = []
  for i in range(n):
    target = positives[i] / positives[i].sum()
    rows.append(-np.sum(target * _np_log_softmax(logits[i])))
  cols = []
  for j in range(n):
    target = positives[:, j] / positives[:, j].sum()
    cols.append(-np.sum(target * _np_log_softmax(logits[:, j])))
  return 0.5 * (np.mean(rows) + np.mean(cols))


def _random_unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --- softmax_cross_entropy ---------------------------------------------------


def test_softmax_cross_entropy_hand_values():
  # logits [0, ln 3] -> softmax [1/4, 3/4]; CE(label 1) = -ln(3/4) = ln(4/3),
  # CE(label 0) = -ln(1/4) = ln 4.
  logits = jnp.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
  loss = losses.softmax_cross_entropy(logits, jnp.array([1, 0]))
  assert loss.shape == (2,)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, [math.log(4 / 3), math.log(4.0)], rtol=1e-6)


def test_softmax_cross_entropy_label_smoothing_hand_value():
  # ls = 0.1 over 2 classes: target(class 1) = 0.9 + 0.1/2 = 0.95,
  # target(class 0) = 0.05 -> loss = -(0.95 ln 0.75 + 0.05 ln 0.25).
  logits = jnp.array([[0.0, math.log(3.0)]])
  loss = losses.softmax_cross_entropy(logits, jnp.array([1]), label_smoothing=0.1)
  expected = -(0.95 * math.log(0.75) + 0.05 * math.log(0.25))
  np.testing.assert_allclose(loss, [expected], rtol=1e-6)


def test_softmax_cross_entropy_matches_numpy_and_upcasts_bfloat16():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7)).astype(np.float32) * 3
  labels = rng.integers(0, 7, size=5)
  ls = 0.2
  targets = (1 - ls) * np.eye(7)[labels] + ls / 7
  expected = np.array(
    [-np.sum(targets[i] * _np_log_softmax(logits[i].astype(np.float64))) for i in range(5)]
  )
  got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), ls)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # bf16 logits must still produce a float32 loss.
  got_bf16 = losses.softmax_cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels))
  assert got_bf16.dtype == jnp.float32


# --- sigmoid_binary_cross_entropy --------------------------------------------


def test_sigmoid_bce_hand_value():
  # logit 0 -> p = 1/2, so either target costs ln 2; two classes summed -> 2 ln 2.
  loss = losses.sigmoid_binary_cross_entropy(jnp.zeros((1, 2)), jnp.array([[1.0, 0.0]]))
  np.testing.assert_allclose(loss, [2 * math.log(2.0)], rtol=1e-6)


def test_sigmoid_bce_matches_numpy_including_extreme_logits():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 6)) * 5
  logits[0] = [100.0, -100.0, 100.0, -100.0, 50.0, -50.0]
  targets = rng.integers(0, 2, size=(4, 6)).astype(np.float64)
  targets[0] = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
  # Direct stable float64 formula: BCE = max(x, 0) - x*t + log(1 + exp(-|x|)).
  expected = np.sum(
    np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits))), axis=1
  )
  got = losses.sigmoid_binary_cross_entropy(
    jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32)
  )
  assert got.shape == (4,)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Row 0 by hand: correct confident classes cost ~0; wrong ones cost |x|:
  # (-100 with t=1) -> 100, (100 with t=0) -> 100, (-50 with t=1) -> 50.
  np.testing.assert_allclose(got[0], 250.0, rtol=1e-6)


def test_sigmoid_bce_gradient_finite_at_extremes():
  logits = jnp.array([[100.0, -100.0]])
  targets = jnp.array([[0.0, 1.0]])
  grad = jax.grad(lambda x: losses.sigmoid_binary_cross_entropy(x, targets).sum())(logits)
  # d/dx = sigmoid(x) - t -> [1, -1] in the saturated wrong-answer regime.
  np.testing.assert_allclose(grad, [[1.0, -1.0]], atol=1e-6)


# --- nce_loss ---------------------------------------------------------------


def test_nce_hand_value_identity_embeddings():
  # a = b = I_2, scale 1 -> logits [[1, 0], [0, 1]]; every row and column
  # has CE = -ln(e / (e + 1)) = ln(1 + e^-1).
  eye = jnp.eye(2)
  loss, logits = losses.nce_loss(eye, eye, 1.0)
  np.testing.assert_allclose(logits, np.eye(2), atol=1e-7)
  np.testing.assert_allclose(loss, math.log1p(math.exp(-1.0)), rtol=1e-6)


def test_nce_zero_scale_is_log_batch_for_any_targets():
  # logit_scale 0 -> all logits 0 -> log_softmax = -ln B everywhere, and any
  # target distribution summing to 1 gives CE = ln B.
  rng = np.random.default_rng(2)
  a = jnp.asarray(_random_unit(rng, 4, 3))
  b = jnp.asarray(_random_unit(rng, 4, 3))
  pos = losses.positives_from_labels(jnp.array([0, 0, 1, 2]))
  for positives in (None, pos):
    loss, _ = losses.nce_loss(a, b, 0.0, positives)
    np.testing.assert_allclose(loss, math.log(4.0), rtol=1e-6)


def test_nce_matches_numpy_reference_diagonal():
  rng = np.random.default_rng(3)
  a = _random_unit(rng, 8, 16)
  b = _random_unit(rng, 8, 16)
  loss, logits = losses.nce_loss(jnp.asarray(a), jnp.asarray(b), 10.0)
  assert logits.shape == (8, 8)
  np.testing.assert_allclose(logits, 10.0 * a.astype(np.float64) @ b.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss, _np_nce(a, b, 10.0, None), rtol=1e-5)


def test_nce_matches_numpy_reference_multi_positive():
  rng = np.random.default_rng(4)
  a = _random_unit(rng, 8, 16)
  b = _random_unit(rng, 8, 16)
  labels = np.array([0, 1, 0, 2, 1, 0, 3, 2])
  pos = np.asarray(losses.positives_from_labels(jnp.asarray(labels)))
  loss, _ = losses.nce_loss(jnp.asarray(a), jnp.asarray(b), 7.0, jnp.asarray(pos))
  expected = _np_nce(a, b, 7.0, pos)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # Repeated labels must actually change the loss relative to CLIP's diagonal.
  assert abs(expected - _np_nce(a, b, 7.0, None)) > 1e-3


def test_nce_asymmetric_positives_use_row_and_column_normalisation():
  # A non-symmetric mask: row 0 has two positives, column 1 has one and
  # column 0 has two, so row- and column-normalised targets differ.
  rng = np.random.default_rng(5)
  a = _random_unit(rng, 3, 4)
  b = _random_unit(rng, 3, 4)
  pos = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=bool)
  loss, _ = losses.nce_loss(jnp.asarray(a), jnp.asarray(b), 5.0, jnp.asarray(pos))
  np.testing.assert_allclose(loss, _np_nce(a, b, 5.0, pos), rtol=1e-5)


def test_nce_identity_positives_equal_clip():
  rng = np.random.default_rng(6)
  a = jnp.asarray(_random_unit(rng, 6, 5))
  b = jnp.asarray(_random_unit(rng, 6, 5))
  clip, _ = losses.nce_loss(a, b, 3.0)
  multi, _ = losses.nce_loss(a, b, 3.0, jnp.eye(6, dtype=bool))
  np.testing.assert_allclose(multi, clip, rtol=1e-6)


def test_nce_perfectly_aligned_large_scale_near_zero():
  # a = b = one-hot rows, scale 100: each row/column CE = ln(1 + 3 e^-100) ~ 1e-43.
  eye = jnp.eye(4)
  loss, _ = losses.nce_loss(eye, eye, 100.0)
  assert 0.0 <= float(loss) < 1e-6
  # Misaligned pairing (b rolled by one) at the same scale costs ~100.
  bad, _ = losses.nce_loss(eye, jnp.roll(eye, 1, axis=0), 100.0)
  np.testing.assert_allclose(bad, 100.0, rtol=1e-5)


def test_nce_gradients_finite_and_jit_matches_eager():
  rng = np.random.default_rng(7)
  a = jnp.asarray(_random_unit(rng, 5, 8))
  b = jnp.asarray(_random_unit(rng, 5, 8))
  pos = losses.positives_from_labels(jnp.array([0, 1, 1, 2, 0]))

  def objective(a, b, log_scale):
    return losses.nce_loss(a, b, jnp.exp(log_scale), pos)[0]

  grads = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(a, b, jnp.log(50.0))
  for g in grads:
    assert np.all(np.isfinite(g))
  # Gradient must be non-trivial (the loss depends on all inputs).
  assert float(jnp.abs(grads[0]).sum()) > 0

  eager = losses.nce_loss(a, b, 50.0, pos)
  jitted = jax.jit(losses.nce_loss)(a, b, 50.0, pos)
  np.testing.assert_allclose(jitted[0], eager[0], rtol=1e-6)
  # Logits (up to about 40 here): XLA's fused jit may round a product once less than eager.
  np.testing.assert_allclose(jitted[1], eager[1], rtol=1e-6, atol=1e-5)
  jitted_clip = jax.jit(losses.nce_loss)(a, b, 50.0)
  np.testing.assert_allclose(jitted_clip[0], losses.nce_loss(a, b, 50.0)[0], rtol=1e-6)


# --- positives_from_labels, top1_correct, l2_normalize ---------------------


def test_positives_from_labels():
  got = losses.positives_from_labels(jnp.array([3, 1, 3]))
  expected = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=bool)
  assert got.dtype == jnp.bool_
  np.testing.assert_array_equal(got, expected)


def test_top1_correct():
  logits = jnp.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
  # Row 2 ties classes 0 and 1; argmax picks the lowest index (0).
  got = losses.top1_correct(logits, jnp.array([1, 2, 0]))
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, [1.0, 0.0, 1.0])


def test_l2_normalize_values_zero_vector_and_gradient():
  x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
  got = losses.l2_normalize(x)
  # [3, 4] has norm 5; the zero vector stays zero instead of NaN.
  np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
  grad = jax.grad(lambda v: losses.l2_normalize(v).sum())(x)
  assert np.all(np.isfinite(grad))
  # Column normalisation via axis=0: column [3, 0] -> [1, 0].
  np.testing.assert_allclose(losses.l2_normalize(x, axis=0), [[1.0, 1.0], [0.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("eps", [1e-6, 1e-3])
def test_l2_normalize_small_vector_clamped_by_eps(eps):
  # Norm below eps -> divided by eps, not by the tiny norm.
  x = jnp.array([eps / 10, 0.0])
  np.testing.assert_allclose(losses.l2_normalize(x, eps=eps), [0.1, 0.0], rtol=1e-4)

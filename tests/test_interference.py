"""Task interference, sign purity and affinity against direct computations on toy problems."""

from __future__ import annotations

import numpy as np
import pytest

from imp.analysis import interference as itf


def _toy():
  """Two tasks with quadratic losses L_t(θ; x) = ½|A_t θ - x|² on a 3-d θ, 3 batches each."""
  rng = np.random.default_rng(0)
  a = [rng.normal(size=(4, 3)) for _ in range(2)]
  xs = [[rng.normal(size=4) for _ in range(3)] for _ in range(2)]
  theta = rng.normal(size=3)
  loss = lambda t, th, x: 0.5 * float(np.sum((a[t] @ th - x) ** 2))  # noqa: E731
  grad = lambda t, th, x: a[t].T @ (a[t] @ th - x)  # noqa: E731
  return theta, xs, loss, grad


def test_interference_equals_direct_gradient_steps():
  theta, xs, loss, grad = _toy()
  grads = [np.stack([grad(t, theta, x) for x in xs[t]]) for t in range(2)]
  got = itf.interference_matrix(grads)
  # Direct eq. 1-2: step θ by -λ g_j(x_j)/|g_j(x_j)| (no optimizer), measure L_i's drop, average
  # over x_j; divide by the same drop under task i's own steps; average over x_i.
  lam = 1e-6

  def drop(i, j, xi):
    return np.mean([loss(i, theta, xi) - loss(i, theta - lam * g / np.linalg.norm(g), xi)
                    for g in (grad(j, theta, xj) for xj in xs[j])])

  direct = np.array([[np.mean([drop(i, j, xi) / drop(i, i, xi) for xi in xs[i]])
                      for j in range(2)] for i in range(2)])
  np.testing.assert_allclose(got, direct, rtol=1e-4)
  np.testing.assert_allclose(np.diag(got), 1.0)


def test_interference_sign_on_hand_case():
  # Task 0's gradient is e0; task 1's is -e0 + e1. Unit direction of task 1: (-1, 1)/sqrt2.
  # I(0, 1) = (e0 . d1) / (e0 . e0) = -1/sqrt2; I(1, 0) = ((-1, 1) . e0) / ((-1, 1) . d1)
  # = -1 / sqrt2.
  got = itf.interference_matrix([np.array([[1.0, 0.0]]), np.array([[-1.0, 1.0]])])
  np.testing.assert_allclose(got, [[1, -1 / np.sqrt(2)], [-1 / np.sqrt(2), 1]])


def test_sign_purity():
  g = np.array([0.5, -2.0, 3.0, 0.0])
  np.testing.assert_allclose(itf.sign_purity(np.stack([np.abs(g) + 1, np.abs(g) + 1])), 1.0)
  np.testing.assert_allclose(itf.sign_purity(np.stack([g, g]))[:3], [1.0, 0.0, 1.0])
  np.testing.assert_allclose(itf.sign_purity(np.stack([g, -g])), 0.5)
  # Three tasks (+1, +1, -2): (1 + 0/4) / 2 = 0.5; (+3, -1): (1 + 2/4) / 2 = 0.75.
  np.testing.assert_allclose(itf.sign_purity([[1.0, 3.0], [1.0, -1.0], [-2.0, 0.0]]),
                             [0.5, 0.75])
  np.testing.assert_allclose(itf.purity_histogram([0.0, 0.1, 0.5, 0.75, 1.0]),
                             [0.4, 0.0, 0.2, 0.2, 0.2])


def test_task_affinity():
  # Z[i, j] = 1 - after[i, j] / before[j]: task 0's step halves task 1's loss (Z = 0.5),
  # task 1's step doubles task 0's (Z = -1).
  z = itf.task_affinity([2.0, 4.0], [[1.0, 2.0], [4.0, 3.0]])
  np.testing.assert_allclose(z, [[0.5, 0.5], [-1.0, 0.25]])
  with pytest.raises(ValueError, match="loss_after"):
    itf.task_affinity([1.0], [[1.0, 2.0]])


def test_zero_gradient_is_an_error():
  with pytest.raises(ValueError, match="all-zero gradient"):
    itf.interference_matrix([np.zeros((1, 2)), np.ones((1, 2))])


def test_selection_over_scanned_layers():
  params = {"encoder": {"layers": {"mlp": {"kernel": np.arange(6.0).reshape(2, 3)}}},
            "head": {"bias": np.ones(2)}}
  names = list(itf.named_leaves(params))
  assert names == ["encoder/layers[0]/mlp/kernel", "encoder/layers[1]/mlp/kernel", "head/bias"]
  chosen = itf.select(names, r"layers\[1\]/.*mlp")
  np.testing.assert_array_equal(itf.flat_selected(params, chosen), [3.0, 4.0, 5.0])
  mask = itf.selection_mask(params, chosen)
  np.testing.assert_array_equal(mask["encoder"]["layers"]["mlp"]["kernel"], [[0] * 3, [1] * 3])
  np.testing.assert_array_equal(mask["head"]["bias"], [0, 0])
  with pytest.raises(ValueError, match="matches no parameter"):
    itf.select(names, "attn")


# --- plots ------------------------------------------------------------------------------------


def test_loss_curves_and_counts(tmp_path):
  from imp.analysis import plots

  records = [{"step": 10, "kind": "train", "a/base/loss": 2.0, "b/base/loss": 1.0,
              "moe/aux_loss": 0.1, "a/base/accuracy": 0.5},
             {"step": 20, "kind": "train", "a/base/loss": 1.5}]
  curves = plots.loss_curves(records)
  assert list(curves) == ["a/base", "b/base"]
  np.testing.assert_array_equal(curves["a/base"][0], [10, 20])
  np.testing.assert_array_equal(curves["a/base"][1], [2.0, 1.5])
  # Schedule 0, 1, 0, 0 over two tasks: cumulative counts per step.
  np.testing.assert_array_equal(plots.cumulative_counts([0, 1, 0, 0], 2),
                                [[1, 0], [1, 1], [2, 1], [3, 1]])
  for path in (plots.plot_loss_curves(curves, tmp_path / "l.png"),
               plots.plot_task_counts(plots.cumulative_counts([0, 1, 0], 2), ["a", "b"],
                                      tmp_path / "c.png"),
               plots.plot_task_matrix(np.eye(2), ["a", "b"], tmp_path / "m.png", "I")):
    assert path.read_bytes()[:4] == b"\x89PNG"
  plots.add_to_tensorboard(tmp_path, {"m": tmp_path / "m.png"}, step=3)
  assert list((tmp_path / "tensorboard").iterdir())

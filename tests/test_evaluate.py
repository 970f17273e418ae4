"""Tests for imp.evaluate.zero_shot and imp.evaluate.linear_probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from imp.evaluate import linear_probe as lp
from imp.evaluate import zero_shot as zs


def _unit(deg: float) -> list[float]:
  rad = math.radians(deg)
  return [math.cos(rad), math.sin(rad)]


# --- zero-shot ----------------------------------------------------------------


def test_zero_shot_axes_and_known_angles():
  class_emb = np.eye(3)
  points = np.array(
    [
      [math.cos(math.radians(30)), math.sin(math.radians(30)), 0.0],  # cos 30 > cos 60 -> 0
      [math.cos(math.radians(60)), math.sin(math.radians(60)), 0.0],  # -> 1
      [0.0, 0.1, 1.0],  # mostly along z -> 2
      # All cosines <= 0: [-1, -0.5, 0]/|.| vs axes -> 0 is the largest, so
      # argmax (not argmax of |cos|) must pick class 2.
      [-5.0, -2.5, 0.0],
      [0.0, 40.0, 0.0],  # norm of the query must not matter -> 1
    ]
  )
  preds = zs.zero_shot_predictions(points, class_emb)
  np.testing.assert_array_equal(preds, [0, 1, 2, 2, 1])
  assert zs.top1_accuracy(preds, [0, 1, 2, 2, 0]) == pytest.approx(0.8)


def test_zero_shot_normalises_class_embeddings():
  # Class 1 has a huge norm but points 45 deg away from the query at 10 deg;
  # class 0 at 0 deg is 10 deg away -> raw dot product would pick class 1,
  # cosine similarity picks class 0.
  class_emb = np.array([_unit(0), [100 * v for v in _unit(55)]])
  assert zs.zero_shot_predictions(np.array([_unit(10)]), class_emb).tolist() == [0]


def test_zero_shot_ties_go_to_lowest_index():
  class_emb = np.eye(3)
  # [1, 1, 0] has cosine 1/sqrt(2) with both class 0 and class 1 -> 0;
  # [0, 1, 1] ties classes 1 and 2 -> 1.
  preds = zs.zero_shot_predictions(np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]), class_emb)
  np.testing.assert_array_equal(preds, [0, 1])
  # Duplicated class embeddings tie exactly for any query.
  dup = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
  assert zs.zero_shot_predictions(np.array([[0.9, 0.1, 0.2]]), dup).tolist() == [1]


def test_class_embeddings_normalise_before_and_after_mean():
  # Templates [10, 0] and [0, 1]: per-template normalisation gives [1, 0] and
  # [0, 1], mean [0.5, 0.5], renormalised [1/sqrt2, 1/sqrt2]. Averaging raw
  # vectors would give [5, 0.5] (about 5.7 deg) instead.
  got = zs.class_embeddings(np.array([[[10.0, 0.0], [0.0, 1.0]]]))
  np.testing.assert_allclose(got, [[1 / math.sqrt(2), 1 / math.sqrt(2)]], rtol=1e-12)
  assert got.shape == (1, 2)


def test_template_averaging_changes_argmax():
  # Query at 10 deg. First templates only: class 0 at 0 deg (10 deg away) beats
  # class 1 at 30 deg (20 deg away). Ensembled: class 0's templates at 0 and
  # 90 deg average to 45 deg (35 deg away), class 1 stays at 30 deg -> class 1.
  templates = np.array([[_unit(0), _unit(90)], [_unit(30), _unit(30)]])
  query = np.array([_unit(10)])
  single = zs.zero_shot_predictions(query, templates[:, 0])
  ensembled_emb = zs.class_embeddings(templates)
  ensembled = zs.zero_shot_predictions(query, ensembled_emb)
  assert single.tolist() == [0]
  assert ensembled.tolist() == [1]
  np.testing.assert_allclose(np.linalg.norm(ensembled_emb, axis=1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(ensembled_emb, [_unit(45), _unit(30)], atol=1e-12)


def test_top1_accuracy_and_errors():
  assert zs.top1_accuracy(np.array([1, 2, 3, 4]), np.array([1, 0, 3, 0])) == 0.5
  assert isinstance(zs.top1_accuracy([0], [0]), float)
  with pytest.raises(ValueError, match="must both be"):
    zs.top1_accuracy([0, 1], [0])
  with pytest.raises(ValueError, match="empty"):
    zs.top1_accuracy([], [])
  with pytest.raises(ValueError, match="dim"):
    zs.zero_shot_predictions(np.zeros((2, 3)), np.zeros((2, 4)))


# --- linear probe -------------------------------------------------------------


def _blobs(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  # Three well-separated Gaussian blobs (centres 10 apart, unit std) in 5-d.
  rng = np.random.default_rng(seed)
  centres = np.array([[10.0, 0, 0, 0, 0], [0, 10.0, 0, 0, 0], [0, 0, 10.0, 0, 0]])
  x = np.concatenate([c + rng.normal(size=(n_per_class, 5)) for c in centres])
  y = np.repeat(np.arange(3), n_per_class)
  return x, y


def test_probe_separable_blobs_perfect():
  train_x, train_y = _blobs(20, seed=0)
  test_x, test_y = _blobs(20, seed=1)
  result = lp.linear_probe(train_x, train_y, test_x, test_y)
  assert result.accuracy == 1.0
  assert result.cv_accuracy == 1.0
  # Every C separates the blobs perfectly, so the tie rule picks the smallest.
  assert result.l2 == 0.01


def test_probe_random_labels_near_chance():
  rng = np.random.default_rng(0)
  train_x = rng.normal(size=(150, 10))
  train_y = rng.integers(0, 3, size=150)
  test_x = rng.normal(size=(300, 10))
  test_y = rng.integers(0, 3, size=300)
  result = lp.linear_probe(train_x, train_y, test_x, test_y, c_grid=(0.01, 1.0))
  # Chance is 1/3; std of accuracy on 300 examples is ~0.027.
  assert abs(result.accuracy - 1 / 3) < 0.1
  assert result.cv_accuracy < 0.5


def test_probe_chooses_c_like_manual_cv_and_never_uses_test_labels():
  rng = np.random.default_rng(3)
  # Overlapping blobs so the CV accuracies differ across C.
  train_x = rng.normal(size=(60, 8)) + np.repeat(np.eye(3, 8) * 1.0, 20, axis=0)
  train_y = np.repeat(np.arange(3), 20)
  test_x = rng.normal(size=(30, 8)) + np.repeat(np.eye(3, 8) * 1.0, 10, axis=0)
  test_y = np.repeat(np.arange(3), 10)
  grid = (0.001, 0.1, 10.0)

  result = lp.linear_probe(train_x, train_y, test_x, test_y, c_grid=grid, seed=5)
  assert result.l2 in grid

  # Reference selection with the same folds; ties -> smallest C.
  splitter = StratifiedKFold(n_splits=3, shuffle=True, random_state=5)
  scores = {
    c: cross_val_score(
      make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)),
      train_x,
      train_y,
      cv=splitter,
    ).mean()
    for c in grid
  }
  best = max(scores.values())
  assert result.l2 == min(c for c in grid if scores[c] == best)
  assert result.cv_accuracy == pytest.approx(best)

  # Relabelling the test set changes test accuracy but not the selection.
  shuffled = lp.linear_probe(train_x, train_y, test_x, (test_y + 1) % 3, c_grid=grid, seed=5)
  assert (shuffled.l2, shuffled.cv_accuracy) == (result.l2, result.cv_accuracy)
  assert shuffled.accuracy != result.accuracy

  # Same seed -> identical result.
  assert lp.linear_probe(train_x, train_y, test_x, test_y, c_grid=grid, seed=5) == result


def test_probe_result_is_frozen():
  result = lp.ProbeResult(accuracy=1.0, l2=0.1, cv_accuracy=0.9)
  with pytest.raises(AttributeError):
    result.accuracy = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"train_y": np.zeros(5, int)}, "length mismatch: train_x"),
    ({"test_y": np.zeros(3, int)}, "length mismatch: test_x"),
    ({"test_y": np.array([0, 1, 7, 7])}, r"not seen in train_y: \[7\]"),
    ({"train_y": np.array([0, 0, 0, 0, 1, 1])}, r"classes \[1\] have fewer training examples"),
    ({"test_x": np.zeros((4, 3))}, "feature dim mismatch"),
    ({"c_grid": ()}, "c_grid"),
  ],
)
def test_probe_input_errors(kwargs, message):
  args = {
    "train_x": np.arange(12, dtype=float).reshape(6, 2),
    "train_y": np.array([0, 0, 0, 1, 1, 1]),
    "test_x": np.zeros((4, 2)),
    "test_y": np.array([0, 1, 0, 1]),
  }
  args.update(kwargs)
  c_grid = args.pop("c_grid", (1.0,))
  with pytest.raises(ValueError, match=message):
    lp.linear_probe(**args, c_grid=c_grid, folds=3)

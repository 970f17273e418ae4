"""Retrieval Recall@K on small fixed embeddings with hand-computed ranks, and the suite schema."""

from __future__ import annotations

import math

import ml_collections
import numpy as np
import pytest

from imp.data import ByteTokenizer, DataSource, load_source
from imp.data.sources import ArraySplit
from imp.evaluate import retrieval as rt
from imp.evaluate.suite import EvalSuite
from imp.model import Request


def _unit(deg: float) -> list[float]:
  return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_ranks_hand_computed_with_pessimistic_ties():
  # Gallery on the axes (exact in floating point): 0, 90, 180 and 270 degrees.
  gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
  queries = np.array([
      [1.0, 0.2],    # nearest item 0, its positive -> rank 1
      [0.2, 1.0],    # positive 0 scores 0.2/|q|, behind negative 1 (1/|q|) -> rank 2
      [1.0, 1.0],    # positive 1 and negative 0 both score exactly 1/sqrt(2): pessimistic -> 2
      [-1.0, -0.1],  # positive 0 scores -1/|q|, below all three negatives -> rank 4
  ])
  positives = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], bool)
  np.testing.assert_array_equal(rt.retrieval_ranks(queries, gallery, positives), [1, 2, 2, 4])
  # Recall@1: only query 0 -> 1/4. Recall@2: queries 0, 1, 2 -> 3/4. Recall@5: all.
  assert rt.recall_at_k(queries, gallery, positives, ks=(1, 2, 5)) == {1: 0.25, 2: 0.75, 5: 1.0}
  # The tie rule does not depend on the gallery's order: swap items 0 and 1.
  swapped = rt.retrieval_ranks(queries, gallery[[1, 0, 2, 3]], positives[:, [1, 0, 2, 3]])
  np.testing.assert_array_equal(swapped, [1, 2, 2, 4])


def test_collapsed_embeddings_get_the_worst_rank():
  # Every embedding equal: every item ties. Pessimistic rank = 1 + all 4 negatives = 5.
  same = np.ones((5, 3))
  ranks = rt.retrieval_ranks(same, same, rt.pair_positives(5))
  np.testing.assert_array_equal(ranks, [5] * 5)
  assert rt.recall_at_k(same, same, rt.pair_positives(5), ks=(1, 5)) == {1: 0.0, 5: 1.0}


def test_label_positives_any_same_class_item_counts():
  # Query at 10 deg, class 1. Gallery: class 0 at 0 deg (nearest), class 1 at 30 and 90 deg.
  # Best positive is at 30 deg (20 away), one negative (10 away) is ahead -> rank 2. A positive
  # tied with the best one (two class-1 items at 30 deg) does not push the rank down.
  gallery = np.array([_unit(0), _unit(30), _unit(90), _unit(30)])
  positives = rt.label_positives([1], [0, 1, 1, 1])
  np.testing.assert_array_equal(positives, [[False, True, True, True]])
  assert rt.retrieval_ranks(np.array([_unit(10)]), gallery, positives).tolist() == [2]


def test_bidirectional_uses_the_transpose():
  # a0 and b0 at 0 deg, a1 at 90 deg, b1 at 60 deg, b2 at 170 deg (pair only a0-b0, a1-b1).
  # a->b: a0 -> b0 rank 1; a1: b1 (30 away) nearest -> rank 1. R@1 = 1.
  # b->a with positives.T: b0 -> a0 rank 1; b1 at 60: a1 30 away, a0 60 away -> rank 1;
  # b2 has no positive in a's gallery, so use a 3x2 positives matrix with b2 -> a1.
  a = np.array([_unit(0), _unit(90)])
  b = np.array([_unit(0), _unit(60), _unit(170)])
  positives = np.array([[1, 0, 0], [0, 1, 1]], bool)  # a1 matches b1 and b2
  out = rt.bidirectional_recall(a, b, positives, ("image", "audio"), ks=(1,))
  # b2 at 170 deg: a1 is 80 away, a0 170 away -> rank 1. All recalls are 1.
  assert out == {"image_to_audio/R@1": 1.0, "audio_to_image/R@1": 1.0}
  b_far = np.array([_unit(0), _unit(60), _unit(10)])  # b2 now nearer a0 (10) than a1 (80)
  out = rt.bidirectional_recall(a, b_far, positives, ("image", "audio"), ks=(1,))
  assert out == {"image_to_audio/R@1": 1.0, "audio_to_image/R@1": pytest.approx(2 / 3)}


def test_ranks_match_a_loop_reference():
  rng = np.random.default_rng(0)
  q, g = rng.normal(size=(7, 4)), rng.normal(size=(9, 4))
  pos = rng.random((7, 9)) < 0.3
  pos[:, 0] |= ~pos.any(axis=1)
  ranks = rt.retrieval_ranks(q, g, pos)
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  for i in range(7):
    order = sorted(range(9), key=lambda j: -float(qn[i] @ gn[j]))  # no ties in random data
    assert ranks[i] == 1 + next(r for r, j in enumerate(order) if pos[i, j])


def test_errors():
  with pytest.raises(ValueError, match="no positive"):
    rt.retrieval_ranks(np.eye(2), np.eye(2), np.array([[1, 0], [0, 0]], bool))
  with pytest.raises(ValueError, match="positives must be"):
    rt.retrieval_ranks(np.eye(2), np.eye(2), np.eye(3, dtype=bool))
  with pytest.raises(ValueError, match="dim"):
    rt.retrieval_ranks(np.eye(2), np.ones((2, 3)), np.eye(2, dtype=bool))
  with pytest.raises(ValueError, match="ks"):
    rt.recall_at_k(np.eye(2), np.eye(2), np.eye(2, dtype=bool), ks=(0,))


# --- the suite schema ---------------------------------------------------------------------


def _digits():
  return {"digits": load_source("digits", dict(source="sklearn_digits",
                                               label_templates=("the digit {}",)))}


# Four examples carrying an image and a caption. Image i lights pixel i; caption i is "item i".
# The fake model embeds an image as its lit pixels and caption i as a one-hot at PERM[i]: items
# 0 and 1 match, items 2 and 3 are swapped.
PERM = (0, 1, 3, 2)


def _paired_source() -> dict[str, DataSource]:
  images = np.zeros((4, 8, 8, 1), np.uint8)
  for i in range(4):
    images[i, 0, i] = 255
  split = ArraySplit({"image": images, "text": np.array([f"item {i}" for i in range(4)]),
                      "label": np.array([0, 1, 0, 1], np.int32)})
  return {"pairs": DataSource(name="pairs", modalities=("image", "text"),
                              class_names=("even", "odd"),
                              splits={"train": split, "test": split})}


def _fake_infer(request: Request, batch: dict) -> dict:
  out = {}
  for m in request.embed:
    x = batch[m]
    if m == "text":
      index = [PERM[int(text[-1])] if (text := ByteTokenizer().decode(row)) else 0 for row in x]
      out["embedding/text"] = np.eye(64)[index]
    else:
      out["embedding/image"] = (x.reshape(len(x), -1) > 0).astype(np.float64)
  return out


def test_suite_pair_retrieval_hand_computed():
  # image 0 -> caption 0 (score 1) rank 1; image 1 likewise. Image 2 scores 1 against caption 3
  # (a negative) and 0 against every other caption, its positive included: pessimistic rank
  # 1 + 3 negatives = 4. Image 3 likewise. R@1 = 2/4, R@5 = R@10 = 1 (gallery of 4).
  # Captions -> images is the same matrix transposed, so the same recalls.
  evals = {"p": dict(dataset="pairs", resolution=8, zero_shot=False, linear_probe=False,
                     batch_size=3, text_length=8, retrieval=(("image", "text"),),
                     retrieval_positives="pair")}
  suite = EvalSuite(evals, _paired_source())
  names = [f"p/retrieval/{s}/R@{k}" for s in ("image_to_text", "text_to_image")
           for k in (1, 5, 10)]
  assert suite.metric_names == tuple(names)
  expected = {1: 0.5, 5: 1.0, 10: 1.0}
  assert suite.run(_fake_infer) == {n: expected[int(n.rsplit("@", 1)[1])] for n in names}


def test_suite_label_retrieval_hand_computed():
  # Label positives (classes even/odd). Text is the caption field. Image 2 (even): captions 0
  # and 2 are positives with score 0, caption 3 (odd) scores 1 and caption 1 (odd) scores 0:
  # both negatives tie or beat the best positive -> rank 3. Image 3 (odd): caption 2 (even)
  # scores 1 ahead; positives 1, 3 score 0, tied with negative caption 0 -> rank 3.
  # Images 0 and 1 are rank 1. R@1 = 1/2, R@5 = 1.
  evals = {"p": dict(dataset="pairs", resolution=8, zero_shot=False, linear_probe=False,
                     batch_size=4, text_length=8, retrieval=(("image", "text"),),
                     retrieval_positives="label")}
  results = EvalSuite(evals, _paired_source()).run(_fake_infer)
  assert results["p/retrieval/image_to_text/R@1"] == 0.5
  assert results["p/retrieval/image_to_text/R@5"] == 1.0


def test_suite_label_text_without_captions():
  # Digits has no captions: text is the class name in the first template, one per example.
  evals = ml_collections.ConfigDict({"d": dict(
      dataset="digits", resolution=8, zero_shot=False, linear_probe=False, batch_size=200,
      text_length=16, retrieval=(("image", "text"),), retrieval_positives="label")})
  seen = []

  def infer(request, batch):
    if "text" in request.embed:
      seen.extend(t for r in batch["text"] if (t := ByteTokenizer().decode(r)))
    return {f"embedding/{m}": np.ones((len(batch[m]), 4)) for m in request.embed}

  results = EvalSuite(evals, _digits()).run(infer)
  test = _digits()["digits"].split("test").fields["label"]
  names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
  assert seen == [f"the digit {names[y]}" for y in test]
  # Collapsed embeddings: every item ties, so each query ranks behind all 324 other-class items.
  assert results["d/retrieval/image_to_text/R@10"] == 0.0


@pytest.mark.parametrize("change, message", [
    (dict(retrieval_positives="caption"), r"retrieval_positives='caption'; valid: pair, label"),
    (dict(retrieval=(("image", "audio"),)), "has no modality 'audio'"),
    (dict(retrieval=(("image",),)), "pair of two different modalities"),
    (dict(retrieval=(("image", "text"),)), "no \"text\" field"),
    (dict(retrieval=(("image", "text"),), retrival=1), r"evals.d.retrival is not an eval"),
])
def test_suite_retrieval_config_errors(change, message):
  spec = dict(dataset="digits", resolution=8, zero_shot=False, linear_probe=False, **change)
  with pytest.raises(ValueError, match=message):
    EvalSuite({"d": spec}, _digits())

"""The `nce` objective over three modalities (IMP's video-audio-text triplet NCE): the sum of
the three pairwise symmetric losses, against a float64 NumPy reference."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from imp.objectives import get_objective


def _log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_pair_nce(a, b, scale, positives=None):
  """0.5 * (a -> b CE over rows + b -> a CE over columns), multi-positive targets uniform."""
  logits = scale * a.astype(np.float64) @ b.astype(np.float64).T
  pos = np.eye(len(a)) if positives is None else positives.astype(np.float64)
  rows = -(pos / pos.sum(1, keepdims=True) * _log_softmax(logits, 1)).sum(1).mean()
  cols = -(pos / pos.sum(0, keepdims=True) * _log_softmax(logits, 0)).sum(0).mean()
  return 0.5 * (rows + cols)


def _unit(rng, n, d):
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


MODS = ("video", "audio", "text")


@pytest.mark.parametrize("positives", ["diagonal", "same_label"])
def test_triplet_nce_is_the_sum_of_the_three_pairwise_losses(positives):
  rng = np.random.default_rng(0)
  emb = {m: _unit(rng, 6, 5) for m in MODS}
  labels = np.array([0, 1, 0, 2, 1, 3], np.int32)
  scale = 4.0
  outputs = {f"embedding/{m}": jnp.asarray(e) for m, e in emb.items()}
  outputs["logit_scale"] = jnp.asarray(scale)
  nce = get_objective("nce")
  assert nce.needs("h", MODS).embed == MODS
  loss, metrics = nce.loss(outputs, {"label": jnp.asarray(labels)}, head="h", modalities=MODS,
                           positives=positives)
  mask = labels[:, None] == labels[None] if positives == "same_label" else None
  pairs = {f"{a}_{b}": np_pair_nce(emb[a], emb[b], scale, mask)
           for a, b in itertools.combinations(MODS, 2)}
  assert set(pairs) == {"video_audio", "video_text", "audio_text"}
  np.testing.assert_allclose(loss, sum(pairs.values()), rtol=1e-5)
  for name, value in pairs.items():
    np.testing.assert_allclose(metrics[f"{name}_loss"], value, rtol=1e-5)
  accuracies = [float(metrics[f"{p}_accuracy"]) for p in pairs]
  np.testing.assert_allclose(metrics["accuracy"], np.mean(accuracies), rtol=1e-6)


def test_two_modalities_are_unchanged_and_hand_case():
  # Identical one-hot embeddings, scale 1, batch 2: each row's logits [1, 0] -> CE
  # log(1 + e^-1) in both directions; three identical modalities sum three of them.
  eye = jnp.eye(2)
  outputs = {"embedding/video": eye, "embedding/audio": eye, "embedding/text": eye,
             "logit_scale": jnp.asarray(1.0)}
  nce = get_objective("nce")
  pair, metrics = nce.loss(outputs, {"label": jnp.zeros(2, jnp.int32)}, head="h",
                           modalities=("video", "text"))
  np.testing.assert_allclose(pair, np.log1p(np.exp(-1.0)), rtol=1e-6)
  assert set(metrics) == {"accuracy", "logit_scale"}  # the pairwise metrics as before
  triplet, _ = nce.loss(outputs, {"label": jnp.zeros(2, jnp.int32)}, head="h", modalities=MODS)
  np.testing.assert_allclose(triplet, 3 * np.log1p(np.exp(-1.0)), rtol=1e-6)

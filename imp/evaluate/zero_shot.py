"""Zero-shot classification from text-side class embeddings (CLIP style).

Plain NumPy in float64: evaluation runs once per checkpoint on gathered
embeddings, so precision matters more than speed and exact ties stay exact.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def _l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  # Clamp so an all-zero embedding scores 0 against every class rather than NaN.
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.maximum(norm, eps)


def class_embeddings(template_embeddings: npt.ArrayLike) -> np.ndarray:
  """Prompt-ensembled class embeddings.

  Each template embedding is normalised first so that no single prompt
  dominates the mean by having a larger norm; the mean is renormalised
  because averaging unit vectors shortens them.

  Args:
    template_embeddings: `[classes, templates, dim]` text embeddings, one
      per (class, prompt template) pair.

  Returns:
    `[classes, dim]` float64 unit-norm class embeddings.
  """
  emb = np.asarray(template_embeddings, dtype=np.float64)
  if emb.ndim != 3:
    raise ValueError(
      f"template_embeddings must be [classes, templates, dim], got shape {emb.shape}"
    )
  return _l2_normalize(_l2_normalize(emb).mean(axis=1))


def zero_shot_predictions(embeddings: npt.ArrayLike, class_emb: npt.ArrayLike) -> np.ndarray:
  """Predict the class whose embedding has the highest cosine similarity.

  Both sides are L2-normalised here, so callers may pass raw embeddings.
  Ties go to the lowest class index (`np.argmax` returns the first maximum).

  Args:
    embeddings: `[n, dim]` image (or other modality) embeddings.
    class_emb: `[classes, dim]` class embeddings, e.g. from
      `class_embeddings`.

  Returns:
    `[n]` int64 predicted class indices.
  """
  x = np.asarray(embeddings, dtype=np.float64)
  c = np.asarray(class_emb, dtype=np.float64)
  if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
    raise ValueError(
      f"expected embeddings [n, dim] and class_emb [classes, dim], got {x.shape} and {c.shape}"
    )
  similarity = _l2_normalize(x) @ _l2_normalize(c).T  # [n, classes]
  return np.argmax(similarity, axis=1).astype(np.int64)


def top1_accuracy(predictions: npt.ArrayLike, labels: npt.ArrayLike) -> float:
  """Fraction of `predictions` equal to `labels`.

  Args:
    predictions: `[n]` int.
    labels: `[n]` int.

  Returns:
    Accuracy in `[0, 1]` as a Python float.
  """
  pred = np.asarray(predictions)
  lab = np.asarray(labels)
  if pred.shape != lab.shape or pred.ndim != 1:
    raise ValueError(f"predictions and labels must both be [n], got {pred.shape} and {lab.shape}")
  if pred.size == 0:
    raise ValueError("top1_accuracy of an empty set is undefined")
  return float(np.mean(pred == lab))

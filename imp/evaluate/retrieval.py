"""Cross-modal retrieval: Recall@K in both directions from two embedding matrices.

Plain NumPy in float64, like `zero_shot`: retrieval runs once per evaluation on gathered
embeddings, and exact ties must stay exact so that the tie rule below decides them.

Ranks and ties. Each query scores every gallery item by cosine similarity. Its rank is the
1-based position of its best-scoring positive when the gallery is sorted by score, with every
NEGATIVE whose score equals that positive's placed ahead of it (the pessimistic rank). So a
model that maps everything to one point gets the worst rank, not the best, and the result
never depends on the order of the gallery. Other positives tied with the best one do not
push it down: any positive at the top is a hit.

Positives are a bool matrix [queries, gallery]. `pair_positives(n)` is the identity (row i of
one modality matches row i of the other, e.g. a clip and its own soundtrack);
`label_positives` marks every gallery item of the query's class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from imp.evaluate.zero_shot import _l2_normalize

POSITIVES = ("pair", "label")
RECALL_KS = (1, 5, 10)


def pair_positives(n: int) -> np.ndarray:
  """bool [n, n]: item i of one modality matches only item i of the other."""
  return np.eye(n, dtype=bool)


def label_positives(query_labels: npt.ArrayLike, gallery_labels: npt.ArrayLike) -> np.ndarray:
  """bool [queries, gallery]: True where the two items share a class label."""
  q, g = np.asarray(query_labels), np.asarray(gallery_labels)
  if q.ndim != 1 or g.ndim != 1:
    raise ValueError(f"labels must be [n], got {q.shape} and {g.shape}")
  return q[:, None] == g[None, :]


def retrieval_ranks(queries: npt.ArrayLike, gallery: npt.ArrayLike,
                    positives: npt.ArrayLike) -> np.ndarray:
  """Pessimistic 1-based rank of each query's best positive (see the module docstring).

  Args:
    queries: [queries, dim] embeddings (normalised here, so any scale works).
    gallery: [gallery, dim] embeddings.
    positives: bool [queries, gallery]; every query needs at least one positive.

  Returns:
    int64 [queries]: 1 + the number of negatives scoring at least as high as the best
    positive.
  """
  q = np.asarray(queries, dtype=np.float64)
  g = np.asarray(gallery, dtype=np.float64)
  pos = np.asarray(positives, dtype=bool)
  if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
    raise ValueError(f"expected queries [n, dim] and gallery [m, dim], got {q.shape} and "
                     f"{g.shape}")
  if pos.shape != (len(q), len(g)):
    raise ValueError(f"positives must be [queries, gallery] = {(len(q), len(g))}, got "
                     f"{pos.shape}")
  without = np.flatnonzero(~pos.any(axis=1))
  if without.size:
    raise ValueError(f"queries {without[:5].tolist()} have no positive in the gallery; "
                     "recall is undefined for them")
  scores = _l2_normalize(q) @ _l2_normalize(g).T  # [queries, gallery]
  best_positive = np.where(pos, scores, -np.inf).max(axis=1)  # [queries]
  ahead = (~pos) & (scores >= best_positive[:, None])
  return 1 + ahead.sum(axis=1).astype(np.int64)


def recall_at_k(queries: npt.ArrayLike, gallery: npt.ArrayLike, positives: npt.ArrayLike,
                ks: Sequence[int] = RECALL_KS) -> dict[int, float]:
  """k -> fraction of queries whose pessimistic rank is at most k."""
  if not ks or any(int(k) < 1 for k in ks):
    raise ValueError(f"ks must be positive ints, got {tuple(ks)}")
  ranks = retrieval_ranks(queries, gallery, positives)
  return {int(k): float(np.mean(ranks <= k)) for k in ks}


def bidirectional_recall(a: npt.ArrayLike, b: npt.ArrayLike, positives: npt.ArrayLike,
                         names: tuple[str, str], ks: Sequence[int] = RECALL_KS,
                         ) -> dict[str, float]:
  """Recall@K from a to b and from b to a.

  Args:
    a: [n_a, dim] embeddings of modality names[0].
    b: [n_b, dim] embeddings of modality names[1].
    positives: bool [n_a, n_b]; its transpose gives the positives of b's queries.
    names: the two modality names, for the result keys.

  Returns:
    {"<a>_to_<b>/R@<k>": recall, "<b>_to_<a>/R@<k>": recall} for every k.
  """
  pos = np.asarray(positives, dtype=bool)
  first, second = names
  out = {}
  for (src, dst), (q, g, p) in (((first, second), (a, b, pos)), ((second, first), (b, a, pos.T))):
    for k, value in recall_at_k(q, g, p, ks).items():
      out[f"{src}_to_{dst}/R@{k}"] = value
  return out

"""Loss functions and simple metrics for classification and contrastive training.

All functions are pure `jax.numpy` code, safe to call under `jax.jit` and
`jax.grad`. Reductions happen in float32 even when activations are bfloat16,
because log-sum-exp in half precision loses most of the small loss differences
that drive late training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
  """Scale `x` to unit L2 norm along `axis`.

  The norm is clamped from below at `eps`, so a zero vector stays zero
  instead of becoming NaN. The clamp is applied to the squared norm before
  the reciprocal square root so that the gradient at zero is finite too
  (clamping after `sqrt` would multiply 0 by the infinite slope of `sqrt`).

  Args:
    x: any shape, e.g. `[batch, dim]`.
    axis: axis to normalise over.
    eps: smallest norm used as a divisor.

  Returns:
    Array of the same shape and dtype as `x`.
  """
  sq_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq_norm, eps * eps))


def _soft_target_cross_entropy(logits: jax.Array, targets: jax.Array, axis: int = -1) -> jax.Array:
  """`-sum(targets * log_softmax(logits))` along `axis`, in float32.

  Args:
    logits: `[..., classes, ...]`.
    targets: same shape as `logits`; each slice along `axis` sums to 1.

  Returns:
    `logits` with `axis` removed.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=axis)
  return -jnp.sum(targets.astype(jnp.float32) * log_probs, axis=axis)


def softmax_cross_entropy(
  logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example softmax cross-entropy with optional label smoothing.

  The target distribution is `(1 - label_smoothing) * onehot(label)
  + label_smoothing / classes`, i.e. the smoothing mass is spread over all
  classes including the true one (the Inception-v3 / optax convention).

  Args:
    logits: `[batch, classes]` float.
    labels: `[batch]` int class indices in `[0, classes)`.
    label_smoothing: in `[0, 1)`.

  Returns:
    `[batch]` float32 loss, not averaged so callers can mask padding.
  """
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  targets = (1.0 - label_smoothing) * onehot + label_smoothing / num_classes
  return _soft_target_cross_entropy(logits, targets)


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example multi-label binary cross-entropy, summed over classes.

  Each class is an independent binary problem. Losses are SUMMED over
  classes (not averaged), matching big_vision's `sigmoid_xent`, so the scale
  grows with the number of positive/negative classes; divide by `classes`
  yourself if you want a per-class mean.

  Uses `log_sigmoid(x)` and `log_sigmoid(-x) = log(1 - sigmoid(x))`, which
  stay finite for large `|logits|` where `log(sigmoid(x))` would give
  `log(0) = -inf`.

  Args:
    logits: `[batch, classes]` float.
    targets: `[batch, classes]` float in {0, 1}.

  Returns:
    `[batch]` float32 loss.
  """
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  per_class = -(
    targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits)
  )
  return jnp.sum(per_class, axis=-1)


def positives_from_labels(labels: jax.Array) -> jax.Array:
  """Pairwise "same label" mask for multi-positive contrastive learning.

  Args:
    labels: `[batch]` int.

  Returns:
    `[batch, batch]` bool, `True` where `labels[i] == labels[j]`. The
    diagonal is always `True`, so every row and column has a positive.
  """
  return labels[:, None] == labels[None, :]


def nce_loss(
  a: jax.Array,
  b: jax.Array,
  logit_scale: jax.Array | float,
  positives: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Symmetric InfoNCE between two batches of paired embeddings.

  `logits = logit_scale * a @ b.T`; the loss is
  `0.5 * (CE over rows (a -> b) + CE over columns (b -> a))`, each direction
  averaged over the batch.

  With `positives=None`, example `i` of `a` is paired with example `i` of
  `b` only (CLIP). With a `positives` mask, several entries can be positive
  (e.g. image-label pairs where a label repeats in the batch, as in UniCL):
  for the a -> b direction row `i`'s target distribution is uniform over
  `positives[i, :]`; for b -> a column `j`'s target is uniform over
  `positives[:, j]`. With `positives = eye(batch)` this equals the CLIP loss.

  Every row AND every column of `positives` must contain at least one `True`
  (otherwise its target is 0/0 and the loss is NaN). This is not checked,
  since a data-dependent check cannot raise under `jit`; masks built by
  `positives_from_labels` always satisfy it because the diagonal is `True`.

  Args:
    a: `[batch, dim]` L2-normalised embeddings of the first modality.
    b: `[batch, dim]` L2-normalised embeddings of the second modality.
    logit_scale: scalar temperature multiplier, already exponentiated
      (callers holding a learned log-scale pass `exp(log_scale)`).
    positives: optional `[batch, batch]` bool, `positives[i, j]` marks
      `(a[i], b[j])` as a matching pair.

  Returns:
    `(loss, logits)`: scalar float32 loss and `[batch, batch]` float32
    logits (useful for retrieval metrics without recomputing them).
  """
  logits = logit_scale * jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32).T)
  if positives is None:
    positives = jnp.eye(logits.shape[0], dtype=jnp.bool_)
  positives = positives.astype(jnp.float32)
  row_targets = positives / jnp.sum(positives, axis=1, keepdims=True)
  col_targets = positives / jnp.sum(positives, axis=0, keepdims=True)
  loss_a_to_b = jnp.mean(_soft_target_cross_entropy(logits, row_targets, axis=1))
  loss_b_to_a = jnp.mean(_soft_target_cross_entropy(logits, col_targets, axis=0))
  return 0.5 * (loss_a_to_b + loss_b_to_a), logits


def top1_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Whether the highest-scoring class is the label.

  Ties go to the lowest class index (`jnp.argmax` semantics).

  Args:
    logits: `[batch, classes]`.
    labels: `[batch]` int.

  Returns:
    `[batch]` float32, 1.0 where correct and 0.0 otherwise, so callers can
    average it with a padding mask.
  """
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)

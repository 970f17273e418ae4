"""Auxiliary losses of MoE routers. All pool tokens over every group; `valid` False tokens
do not count.

Balancing (token choice): Switch's load-balance loss, Shazeer et al.'s importance and load
losses. LIMoE's entropy losses (Mustafa et al., 2022, §3.1), computed per modality:
  local   mean over a modality's tokens of the entropy of each token's router distribution
          (minimising it makes each token's routing confident);
  global  minus the entropy of the modality's mean router distribution, thresholded as
          max(0, tau - H(mean p)) (minimising it spreads the modality over experts until its
          entropy reaches tau: with tau = log(S) it stops pushing once about S experts share
          the modality evenly).

Shapes: G groups, S tokens per group, E experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr

from imp.model.routing import valid_or_all

Array = jax.Array

# Shazeer et al. (2017) add this to the squared mean so a dead layer does not divide by zero.
_CV_EPS = 1e-10

def _cv_squared(x: Array) -> Array:
  """Squared coefficient of variation, population variance / mean^2 (Shazeer et al., 2017)."""
  x = x.astype(jnp.float32)
  return x.var() / (x.mean() ** 2 + _CV_EPS)


def switch_load_balance_loss(probs: Array, top1_expert: Array | None = None,
                             valid: Array | None = None) -> Array:
  """Switch Transformer eq. 4 (Fedus et al., 2021): E * sum_e f_e * P_e.

  f_e = fraction of valid tokens whose top-1 expert is e (before capacity drops), P_e = mean
  router probability of e over valid tokens. 1.0 when both are uniform; E when every token
  sends probability 1 to the same expert.

  Args:
    probs: [G, S, E].
    top1_expert: int [G, S]; defaults to argmax of probs (ties to the lower expert, as top_k).
    valid: bool [G, S].
  """
  e = probs.shape[-1]
  if top1_expert is None:
    top1_expert = jnp.argmax(probs, axis=-1)
  validf = valid_or_all(valid, probs).astype(jnp.float32)[..., None]
  num_valid = jnp.maximum(validf.sum(), 1.0)
  f = (jax.nn.one_hot(top1_expert, e, dtype=jnp.float32) * validf).sum((0, 1)) / num_valid
  p = (probs.astype(jnp.float32) * validf).sum((0, 1)) / num_valid
  return e * jnp.sum(f * p)


def importance_loss(gates: Array, valid: Array | None = None) -> Array:
  """Shazeer et al. (2017) eq. 6: CV(importance)^2, importance_e = sum_tokens gates[..., e].

  gates: [G, S, E], the top-k sparsified gate values (0 for experts a token did not pick).
  """
  validf = valid_or_all(valid, gates).astype(jnp.float32)[..., None]
  return _cv_squared((gates.astype(jnp.float32) * validf).sum((0, 1)))


def load_loss(clean_logits: Array, noisy_logits: Array, noise_std: float, k: int,
              valid: Array | None = None) -> Array:
  """Shazeer et al. (2017) App. A: CV(load)^2 with the smooth load estimator.

  load_e = sum_tokens P(e in top-k), where, resampling only e's noise,
    P = Phi((clean_e - kth_excluding(noisy, k, e)) / noise_std)
  and kth_excluding is the k-th highest noisy logit among the other experts: the (k+1)-th
  overall if e is in the top-k, else the k-th. Here noise_std is a fixed scalar (the paper
  learns Softplus(x W_noise) per expert).

  With noise_std == 0 there is no smooth estimator; load_e is the hard count of tokens with e
  in their top-k, which is piecewise constant, so the loss then has no gradient.

  Args:
    clean_logits, noisy_logits: [G, S, E].
    noise_std: static float >= 0.
    k: experts per token.
    valid: bool [G, S].
  """
  e = clean_logits.shape[-1]
  validf = valid_or_all(valid, clean_logits).astype(jnp.float32)[..., None]
  if k >= e:  # every expert is in every token's top-k: load is uniform.
    return jnp.zeros((), jnp.float32)
  noisy = noisy_logits.astype(jnp.float32)
  top, index = jax.lax.top_k(noisy, k + 1)
  is_in = jax.nn.one_hot(index[..., :k], e, dtype=jnp.float32).sum(-2) > 0
  if noise_std == 0:
    return _cv_squared(jax.lax.stop_gradient((is_in * validf).sum((0, 1))))
  threshold = jnp.where(is_in, top[..., k:k + 1], top[..., k - 1:k])
  prob = ndtr((clean_logits.astype(jnp.float32) - threshold) / noise_std)
  return _cv_squared((prob * validf).sum((0, 1)))


def _entropy(p: Array) -> Array:
  """Entropy along the last axis, 0 log 0 = 0: [..., E] -> [...]."""
  return -jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0).sum(-1)


def _segment_weights(probs: Array, valid: Array | None, segments: Array | None,
                     num_segments: int) -> Array:
  """float32 [M, G, S]: 1 where a valid token belongs to segment (modality) m."""
  validf = valid_or_all(valid, probs).astype(jnp.float32)
  if segments is None:
    return validf[None]
  return jax.nn.one_hot(segments, num_segments, dtype=jnp.float32).transpose(2, 0, 1) * validf


def local_entropy_loss(probs: Array, valid: Array | None = None, segments: Array | None = None,
                       num_segments: int = 1) -> Array:
  """LIMoE's local entropy loss, summed over modalities present:
  sum_m mean_{tokens i of m} H(p(experts | x_i)).

  Args:
    probs: [G, S, E] router probabilities.
    valid: bool [G, S].
    segments: int [G, S] modality id of each token in [0, num_segments); None: one modality.
    num_segments: static number of possible modality ids.
  """
  w = _segment_weights(probs, valid, segments, num_segments)  # [M, G, S]
  per_token = _entropy(probs.astype(jnp.float32))  # [G, S]
  count = w.sum((1, 2))
  means = (w * per_token[None]).sum((1, 2)) / jnp.maximum(count, 1.0)
  return jnp.sum(jnp.where(count > 0, means, 0.0))


def global_entropy_loss(probs: Array, valid: Array | None = None, segments: Array | None = None,
                        num_segments: int = 1, threshold: float | None = None) -> Array:
  """LIMoE's global entropy loss, summed over modalities present: sum_m -H(p_m), with
  p_m = mean_{tokens i of m} p(experts | x_i); with a threshold tau, sum_m max(0, tau - H(p_m)).

  Arguments as `local_entropy_loss`; threshold: static tau or None.
  """
  w = _segment_weights(probs, valid, segments, num_segments)  # [M, G, S]
  count = w.sum((1, 2))
  mean = jnp.einsum("mgs,gse->me", w, probs.astype(jnp.float32)) / jnp.maximum(count, 1.0)[:, None]
  loss = -_entropy(mean)
  if threshold is not None:
    loss = jnp.maximum(0.0, threshold + loss)
  return jnp.sum(jnp.where(count > 0, loss, 0.0))

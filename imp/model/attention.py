"""The one attention function of the model: `jax.nn.dot_product_attention` with a key mask.

The encoder's self-attention, the attention-MoE layers, the Perceiver's cross-attention and
the context pool all call `attend`, so a fused kernel (cuDNN flash attention on GPU) is one
config key away: `model.attention_impl`, a key of ATTENTION_IMPLS. The XLA implementation
computes the logits and the softmax in float32 whatever the inputs' dtype, and casts the
weights back to the value dtype, as the hand-written einsum path did.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# "xla": the portable implementation (any backend); "cudnn": the fused cuDNN kernel (GPU only,
# float16/bfloat16 inputs).
ATTENTION_IMPLS = ("xla", "cudnn")


def resolve_attention_impl(impl: str, dtype: str) -> str:
  """model.attention_impl="auto": cuDNN's fused kernel where it runs (a GPU, and bfloat16 or
  float16 activations: measured 1.19x faster than XLA's at IMP-B's shapes on an H200), XLA's
  elsewhere. Any other value is returned as given."""
  if impl != "auto":
    return impl
  gpu = any(d.platform == "gpu" for d in jax.devices())
  return "cudnn" if gpu and dtype in ("bfloat16", "float16") else "xla"


def check_attention_impl(impl: str) -> None:
  """Raises a message naming `model.attention_impl` for an unknown or unavailable choice."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"model.attention_impl={impl!r} is not known; valid: "
                     f"{', '.join(repr(i) for i in ('auto', *ATTENTION_IMPLS))}.")
  if impl == "cudnn" and not any(d.platform == "gpu" for d in jax.devices()):
    raise ValueError(f"model.attention_impl='cudnn' needs a GPU, but JAX sees only "
                     f"{jax.default_backend()!r} devices; valid here: 'xla'.")


def attend(query: Array, key: Array, value: Array, mask: Array | None = None, *,
           impl: str = "xla") -> Array:
  """Multi-head attention softmax(q k^T / sqrt(H)) v over the keys a mask keeps.

  Args:
    query: [B, T, N, H] (N heads of width H).
    key: [B, S, N, H].
    value: [B, S, N, H].
    mask: bool [B, S], True for keys that may be attended to, or None (all).
    impl: a key of ATTENTION_IMPLS.

  Returns:
    [B, T, N, H] in the value dtype. A query whose keys are all masked out gets the mean of
    the values (uniform weights), as the einsum path with a finfo.min fill did.
  """
  check_attention_impl(impl)
  dtype = value.dtype
  query, key = query.astype(dtype), key.astype(dtype)
  full = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, S] -> [B, N, T, S]
  if full is not None and impl == "cudnn":
    # cuDNN takes a mask as an additive bias whose query axis must be full length (it
    # broadcasts over batch and heads only): [B, 1, T, S].
    full = jnp.broadcast_to(full, (full.shape[0], 1, query.shape[1], full.shape[3]))
  return jax.nn.dot_product_attention(query, key, value, mask=full, implementation=impl)

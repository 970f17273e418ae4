"""The shared, modality-agnostic Transformer encoder (IMP §3.3) and DropToken.

Pre-LayerNorm blocks; `nn.scan` rolls the layers into one compiled body (IMP §3.1.1: 15-30x
faster compiles) and `nn.remat` rematerialises activations by a named policy. Activations
that policies may save are tagged with `checkpoint_name`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from imp.model import logical

Array = jax.Array

# Remat policies by name. "none" keeps every activation (no remat); "full" saves nothing and
# recomputes the whole block in the backward pass (what IMP uses); "dots_saveable" keeps matmul
# outputs and recomputes the cheap elementwise ops.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_block_outputs": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_out"),
}


def drop_tokens(tokens: Array, mask: Array, rate: float, rng: Array) -> tuple[Array, Array]:
  """DropToken (VATT): keeps a random subset of round(N * (1 - rate)) tokens per example.

  Args:
    tokens: [B, N, D].
    mask: bool [B, N], True for real tokens.
    rate: static fraction to drop, in [0, 1).
    rng: PRNG key.

  Returns:
    ([B, K, D], bool [B, K]) with K = max(1, round(N * (1 - rate))), kept tokens in their
    original order.
  """
  b, n, _ = tokens.shape
  keep = max(1, int(round(n * (1.0 - rate))))
  if keep == n:
    return tokens, mask
  noise = jax.random.uniform(rng, (b, n))
  index = jnp.sort(jnp.argsort(noise, axis=1)[:, :keep], axis=1)
  return (jnp.take_along_axis(tokens, index[..., None], axis=1),
          jnp.take_along_axis(mask, index, axis=1))


class SelfAttention(nn.Module):
  """Multi-head self-attention over [B, N, D] with a key mask bool [B, N]."""

  width: int
  num_heads: int

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    if self.width % self.num_heads:
      raise ValueError(
          f"model.width={self.width} is not divisible by model.num_heads={self.num_heads}.")
    head_dim = self.width // self.num_heads
    proj = lambda name: nn.DenseGeneral(  # noqa: E731
        (self.num_heads, head_dim), kernel_init=logical.kernel("embed", "heads", "kv"),
        bias_init=logical.zeros("heads", "kv"), name=name)
    q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)  # [B, N, heads, head_dim]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(x.dtype)
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return nn.DenseGeneral(self.width, axis=(-2, -1), kernel_init=logical.kernel(
        "heads", "kv", "embed"), bias_init=logical.zeros("embed"), name="out")(out)


class Mlp(nn.Module):
  """Position-wise feed-forward: [B, N, D] -> [B, N, mlp_dim] -> [B, N, D]."""

  width: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.Dense(self.mlp_dim, kernel_init=logical.kernel("embed", "mlp"),
                 bias_init=logical.zeros("mlp"), name="wi")(x)
    h = nn.gelu(h)
    return nn.Dense(self.width, kernel_init=logical.kernel("mlp", "embed"),
                    bias_init=logical.zeros("embed"), name="wo")(h)


class EncoderBlock(nn.Module):
  """Pre-LN Transformer block; (x [B, N, D], mask [B, N]) -> (x, None) for `nn.scan`."""

  width: int
  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> tuple[Array, None]:
    y = SelfAttention(self.width, self.num_heads, name="attn")(logical.layer_norm("ln_attn")(x),
                                                               mask)
    x = x + checkpoint_name(y, "attn_out")
    y = Mlp(self.width, self.mlp_dim, name="mlp")(logical.layer_norm("ln_mlp")(x))
    x = x + checkpoint_name(y, "mlp_out")
    return x, None


class Encoder(nn.Module):
  """Stack of `depth` blocks plus a final LayerNorm: ([B, N, D], bool [B, N]) -> [B, N, D].

  Attributes:
    scan_layers: roll the layers with `nn.scan` (parameters get a leading `layers` axis).
    remat_policy: a key of REMAT_POLICIES.
  """

  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  scan_layers: bool = True
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"model.remat_policy={self.remat_policy!r} is not known; valid: "
                       f"{', '.join(REMAT_POLICIES)}.")
    block = EncoderBlock
    policy = REMAT_POLICIES[self.remat_policy]
    if self.remat_policy != "none":
      # Under scan, CSE cannot merge the recomputation across iterations, so it is safe off.
      block = nn.remat(block, policy=policy, prevent_cse=not self.scan_layers)
    if self.scan_layers:
      layers = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=nn.broadcast, length=self.depth,
          metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = layers(self.width, self.num_heads, self.mlp_dim, name="layers")(x, mask)
    else:
      for i in range(self.depth):
        x, _ = block(self.width, self.num_heads, self.mlp_dim, name=f"layer_{i}")(x, mask)
    return logical.layer_norm("ln_final")(x)

"""Checksums of a train state, stored with each checkpoint and checked on restore.

tensorstore notices a torn or truncated file, but a flipped byte inside an array's data often
decodes to other numbers without an error (zstd keeps incompressible float data as raw
blocks). So every save stores two 32-bit sums per array, and a restore recomputes them.

Per array, on its uint32 words w_i at element position i (16- and 8-bit types widened, 64-bit
split in two words):
  sum_i w_i  and  sum_i w_i * (2 h(i) + 1)   (mod 2^32),   h(i) = a position hash.
Integer sums wrap exactly in any order, so the result is the same on any mesh, any process
count and any reduction order; any change of one element changes the first sum, and the
second catches elements that swapped places. Computed by one jit on the sharded state: no
array leaves its devices, and every process gets the same (replicated) numbers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Odd multipliers per dimension, so that h(i) differs along every axis.
_PRIMES = (2654435761, 2246822519, 3266489917, 668265263, 374761393, 1181783497, 2028178513,
           1431655765)


def _words(x: jax.Array) -> jax.Array:
  """x as uint32 words of the same leading shape (a trailing axis of 2 for 64-bit types)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  bits = jnp.dtype(x.dtype).itemsize * 8
  if bits == 32:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if bits in (8, 16):
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}")).astype(jnp.uint32)
  if bits == 64:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
  raise TypeError(f"no checksum for dtype {x.dtype}")


def _sums(x: jax.Array) -> jax.Array:
  """uint32 [2] checksums of one array (see the module docstring)."""
  w = _words(x)
  h = jnp.zeros(w.shape, jnp.uint32)
  for axis in range(w.ndim):  # broadcast iotas, not a flatten: keeps the array's sharding
    prime = jnp.uint32(_PRIMES[axis % len(_PRIMES)])
    h = h + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * prime
  return jnp.stack([jnp.sum(w, dtype=jnp.uint32),
                    jnp.sum(w * (h * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)])


@jax.jit
def _tree_sums(tree: Any) -> Any:
  return jax.tree.map(_sums, tree)


def path_name(path) -> str:
  """A pytree path as "params/encoder/kernel"."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in path)


def checksums(tree: Any) -> dict[str, list[int]]:
  """Leaf path -> [sum, weighted sum] of every array of `tree` (JSON-serialisable)."""
  # Reductions come back replicated: every process reads its own copy, no gather needed.
  sums = jax.tree.map(lambda s: np.asarray(s.addressable_data(0)), _tree_sums(tree))
  return {path_name(p): [int(v) for v in s]
          for p, s in jax.tree_util.tree_flatten_with_path(sums)[0]}


def mismatches(tree: Any, stored: dict[str, list[int]]) -> list[str]:
  """Leaf paths whose checksums differ from `stored` (leaves `stored` lacks are not checked)."""
  now = checksums(tree)
  return [path for path, sums in now.items() if path in stored and stored[path] != sums]

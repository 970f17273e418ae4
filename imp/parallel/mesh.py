"""A device mesh from config, and where state and batches live on it.

Axes are named (data, fsdp, expert, tensor). Batches are split over (data, fsdp, expert):
every device of those axes holds different examples, and the expert axis additionally holds
different experts (GShard), so MoE dispatch is an all-to-all over it. The tensor axis holds
the same examples. Parameter and optimizer-state shardings come from imp/parallel/rules.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imp.config import schema

MESH_AXES = schema.keys_of("mesh")  # data, fsdp, expert, tensor: the mesh's axis order
BATCH_AXES = ("data", "fsdp", "expert")


def mesh_shape(spec: Mapping[str, int] | None, num_devices: int) -> dict[str, int]:
  """Resolves config.mesh (axis -> size, one size may be -1 for "the rest") for the devices."""
  spec = dict(spec or {"data": -1})
  unknown = sorted(set(spec) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"config.mesh.{unknown[0]} is not a mesh axis; valid: "
                     f"{', '.join(MESH_AXES)}.")
  sizes = {axis: int(size) for axis, size in schema.filled(spec, "mesh").items()}
  free = [axis for axis, size in sizes.items() if size == -1]
  if len(free) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
    raise ValueError(f"config.mesh={spec}: sizes must be positive, with at most one -1.")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"config.mesh={spec}: the fixed axes ({fixed} devices) do not divide "
                       f"the {num_devices} devices.")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"config.mesh={spec} has {math.prod(sizes.values())} devices, but this "
                     f"run has {num_devices} ({jax.devices()[0].platform}); make the axis "
                     "sizes multiply to the device count, or use -1 for one axis.")
  return sizes


def make_mesh(spec: Mapping[str, int] | None, devices: Sequence[Any] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(spec, len(devices))
  grid = np.asarray(devices).reshape([sizes[axis] for axis in MESH_AXES])
  return Mesh(grid, MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def process_rows(mesh: Mesh, global_batch: int) -> tuple[int, int]:
  """[start, stop): the rows of a global batch that this process's devices hold.

  put_batch (make_array_from_process_local_data) expects exactly these rows from each
  process, so each process reads only its part of the same global batch.
  """
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  spans = sorted({(s.start or 0, global_batch if s.stop is None else s.stop)
                  for (s,) in index_map.values()})
  start, stop = spans[0][0], spans[-1][1]
  if sum(b - a for a, b in spans) != stop - start:
    raise ValueError(f"config.mesh={dict(mesh.shape)}: this process's devices hold rows "
                     f"{spans} of the batch, not one contiguous block; order the mesh so each "
                     "process's devices are adjacent on the batch axes.")
  return start, stop


def put_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}

"""Device meshes and the shardings of state and batches (config key `mesh`)."""

from imp.parallel.mesh import MESH_AXES, batch_sharding, make_mesh, replicated

__all__ = ["MESH_AXES", "batch_sharding", "make_mesh", "replicated"]

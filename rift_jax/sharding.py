"""Data parallelism with one `jax.jit` over a `Mesh` with a 'data' axis.

Batches are split along their first axis over every device of every host;
parameters and optimiser state are replicated. The same code runs on one CPU,
several GPUs or a TPU slice: only the mesh changes.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rift_jax.errors import UserError


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise UserError(f"{name}={batch_size} is not divisible by the {n} devices; "
                    f"use a multiple of {n}")


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(mesh: Mesh, *arrays):
  """Host arrays (this process's part of the global batch) -> global jax.Arrays
  split over the 'data' axis."""
  sharding = NamedSharding(mesh, P("data"))
  if jax.process_count() == 1:
    out = tuple(jax.device_put(a, sharding) for a in arrays)
  else:
    out = tuple(jax.make_array_from_process_local_data(sharding, a)
                for a in arrays)
  return out if len(out) > 1 else out[0]

"""Data parallelism with one `jax.jit` over a `Mesh` with a 'data' axis.

Batches are split along their first axis over every device of every host;
parameters and optimiser state are replicated. The same code runs on one CPU,
several GPUs or a TPU slice: only the mesh changes.

Multi-host: every process iterates over the same global batches (the order is
a function of (seed, epoch) only) but reads just its own rows
(`process_rows`), and `shard_batch` assembles the global array from the
process-local parts. Jitted functions take their shardings from their inputs,
so XLA inserts the cross-device reductions (BatchNorm statistics, the mean
loss, gradients) itself and the maths is that of one device on the global
batch.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rift_jax.errors import UserError


ACCELERATOR_PATHS_ENV = "RIFT_JAX_ACCELERATOR_PATHS"


def cpu_paths() -> bool:
  """Whether to take the code paths chosen for XLA:CPU (fully unrolled
  attack loops run in host-looped pieces, the phase-decomposed convolution
  input gradient, one α at a time) instead of those chosen for GPU/TPU
  (rolled loops in one program, XLA's own convolution gradients, α vmapped).
  True on the CPU backend unless RIFT_JAX_ACCELERATOR_PATHS=1, which makes a
  CPU run take the accelerator paths — so tests on a CPU exercise what GPU
  and TPU users run."""
  if os.environ.get(ACCELERATOR_PATHS_ENV, "0") == "1":
    return False
  return jax.default_backend() == "cpu"


def use_cpu_devices(count: int, name: str = "cpu_devices") -> None:
  """Splits the host CPU into `count` XLA devices (JAX's public
  `jax_num_cpu_devices`), so batches shard over the cores as over GPUs.

  Per-example work (the attacks, clean and robust accuracy) gives the same
  bits on any number of devices (tests/test_sharding.py); a sharded
  training step reduces its gradients in another order. GPU and TPU runs
  ignore it (only the CPU platform is split). Must run before any JAX
  computation; count 1 changes nothing. Speed: docs/performance.md.
  """
  if not isinstance(count, int) or isinstance(count, bool) or count < 1:
    raise UserError(f"{name}={count!r} must be an integer >= 1 (1: one CPU "
                    "device; 2 on a 2-core machine: one per core)")
  if count == 1:
    return
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as e:
    raise UserError(f"{name}={count} must be set before JAX runs any "
                    "computation (JAX's CPU backend already exists)") from e


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: every device of
  every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise UserError(f"{name}={batch_size} is not divisible by the {n} devices; "
                    f"use a multiple of {n}")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', the rest whole."""
  return NamedSharding(mesh, P("data"))


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def process_rows(mesh: Mesh, global_batch: int) -> slice:
  """The rows `[start, stop)` of a global batch that this process feeds.

  Read from the sharding itself (which rows land on this process's devices),
  so it holds for any device order; the rows must be contiguous, as they are
  for a mesh over `jax.devices()`.
  """
  if jax.process_count() == 1:
    return slice(0, global_batch)
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  starts = sorted({idx[0].start or 0 for idx in index_map.values()})
  stops = sorted({global_batch if idx[0].stop is None else idx[0].stop
                  for idx in index_map.values()})
  start, stop = starts[0], stops[-1]
  per_device = global_batch // mesh.devices.size
  if (stop - start) != per_device * len(starts):
    raise UserError("this process's devices are not contiguous in the mesh; "
                    "build the mesh over jax.devices() in their given order")
  return slice(start, stop)


def shard_batch(mesh: Mesh, *arrays):
  """Host arrays (this process's rows of the global batch, `process_rows`)
  -> global jax.Arrays split over the 'data' axis."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    out = tuple(jax.device_put(a, sharding) for a in arrays)
  else:
    out = tuple(jax.make_array_from_process_local_data(sharding, a)
                for a in arrays)
  return out if len(out) > 1 else out[0]


def to_host(x) -> np.ndarray:
  """The whole global array as numpy on every process (a batch-sharded array
  is not addressable from one host alone in a multi-host run)."""
  if jax.process_count() == 1 or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))

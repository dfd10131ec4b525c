"""Per-example correctness records, kept next to results.json.

Every test-time evaluation (clean, each attack, each corruption × severity)
keeps its boolean correctness vector, so any two models evaluated on the same
images can be compared pairwise after the fact (`rift_jax.evaluation.stats`) without
re-running anything. A record file is an `.npz` holding, per name, the vector
bit-packed (`np.packbits`, 1/8 byte per example) and its length (numbers
that are not correctness, e.g. which attack broke an example, are kept as
they are):

    records.save(path, {'clean': bool[n], 'pgd': bool[n], 'ood/fog/3': bool[m]})
    records.load(path) -> {'clean': bool[n], ...}

Names use '/' for structure (e.g. 'ood/<corruption>/<severity>').
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

_N = "__n__"
_RAW = "__raw__"


def _key(name: str) -> str:
  return name.replace("/", "|")


def save(path: str, vectors: Mapping[str, np.ndarray]) -> None:
  """Writes `{name: bool [n]}` atomically as bit-packed arrays (other
  dtypes as they are)."""
  arrays = {}
  for name, v in vectors.items():
    v = np.asarray(v)
    if v.dtype != bool:
      arrays[_RAW + _key(name)] = v
      continue
    v = v.reshape(-1)
    arrays[_key(name)] = np.packbits(v)
    arrays[_N + _key(name)] = np.int64(v.size)
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def load(path: str) -> dict[str, np.ndarray]:
  """`{name: bool [n]}` from a file written by `save`."""
  out = {}
  with np.load(path) as f:
    for key in f.files:
      if key.startswith(_RAW):
        out[key[len(_RAW):].replace("|", "/")] = f[key]
        continue
      if key.startswith(_N):
        continue
      n = int(f[_N + key])
      out[key.replace("|", "/")] = np.unpackbits(f[key], count=n).astype(bool)
  return out


def of_model(flat: Mapping[str, np.ndarray], model: str) -> dict[str, np.ndarray]:
  """{'at/clean': v, 'rift/clean': w} -> of_model(..., 'at') = {'clean': v}."""
  prefix = model + "/"
  return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
  """{'a': {'b': v}} -> {'a/b': v} (keys turned into strings)."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, name + "/"))
    else:
      out[name] = np.asarray(v)
  return out

"""A suite's state on disk, so that a killed evaluation continues where it
stopped (`autoattack.run_suite(..., state_path=...)`).

A state file is one `.npz` written atomically (temporary name, then rename)
after every batch: the per-example arrays of the run so far and, as JSON,
the scalars, the position (attack, run, batch) and a fingerprint of what is
being evaluated — the model's variables, the images and labels, the attack
list, the batch size and the key. A state written for anything else is
refused with one line naming what differs, never silently mixed in.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np

from rift_jax import workdir
from rift_jax.errors import UserError

_META = "__meta__"


def digest(*trees: Any) -> str:
  """sha256 (hex, first 16 digits) of pytrees of arrays: their structure,
  shapes, dtypes and bytes."""
  h = hashlib.sha256()
  for tree in trees:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    h.update(str(treedef).encode())
    for leaf in leaves:
      a = np.ascontiguousarray(jax.device_get(leaf))
      h.update(f"{a.shape}{a.dtype}".encode())
      h.update(a.tobytes())
  return h.hexdigest()[:16]


class Journal:
  """The state of one suite evaluation at `path` (an `.npz` file).

  `fingerprint`: {what: text} identifying the evaluation (e.g. 'model',
  'data', 'attacks', 'batch_size', 'key'); `load` refuses a state whose
  fingerprint differs.
  """

  def __init__(self, path: str, fingerprint: dict[str, str]):
    self.path = path
    self.fingerprint = {k: str(v) for k, v in fingerprint.items()}

  def load(self) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(scalars, arrays) of the saved state, None if there is none."""
    if not os.path.exists(self.path):
      return None
    try:
      with np.load(self.path) as f:
        meta = json.loads(bytes(f[_META]).decode())
        arrays = {k: f[k] for k in f.files if k != _META}
    except (OSError, ValueError, KeyError) as e:
      raise UserError(f"the suite state {self.path} cannot be read ({e}); "
                      "delete it to start the evaluation again") from None
    saved = meta.get("fingerprint", {})
    for what in sorted(set(saved) | set(self.fingerprint)):
      if saved.get(what) != self.fingerprint.get(what):
        raise UserError(
            f"the suite state {self.path} was written for another {what} "
            f"({saved.get(what)!r}, now {self.fingerprint.get(what)!r}); use "
            "another workdir or delete the file to start again")
    return meta["scalars"], arrays

  def save(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
    """Writes the state atomically (process 0 only)."""
    if jax.process_index() != 0:
      return
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    meta = workdir.dumps({"fingerprint": self.fingerprint,
                          "scalars": scalars}, indent=None)
    blob = np.frombuffer(meta.encode(), np.uint8)

    def write(tmp):
      with open(tmp, "wb") as f:
        np.savez(f, **{_META: blob}, **arrays)

    workdir.atomic_write(self.path, write)


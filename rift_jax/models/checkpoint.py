"""Orbax checkpoints: train states (latest + best) and plain variable sets.

A checkpoint directory holds Orbax steps, each with two items: `state` (the
array pytree) and `meta` (JSON: what model and data it belongs to, epoch,
metrics). Orbax writes into a temporary folder and renames it when complete,
so a killed run never leaves a half-written checkpoint that looks valid.
Restoring reads arrays only: no code from the checkpoint is ever run.

Before restoring, `meta['model']` is compared with the model the caller
expects, so a checkpoint of another architecture is one clear error instead
of a shape mismatch deep in Orbax.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from rift_jax.errors import UserError


def _abstract(tree):
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """Keeps the newest `max_to_keep` steps of one series in `directory`."""

  def __init__(self, directory: str, max_to_keep: int = 1):
    self.directory = os.path.abspath(directory)
    try:
      self._mngr = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               create=True))
    except OSError as e:
      raise UserError(f"checkpoint directory {self.directory!r} is not "
                      f"writable: {e}") from None

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                    force=True)
    self._mngr.wait_until_finished()

  def read_meta(self, step: int | None = None) -> dict | None:
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    return dict(self._mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"])

  def restore(self, target: Any, expect_model: dict | None = None,
              step: int | None = None) -> tuple[Any, dict]:
    """Restores (state, meta) shaped like `target` (arrays or shape structs)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"no checkpoint in {self.directory!r}")
    meta = self.read_meta(step)
    check_model(meta, expect_model, self.directory)
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(target)),
          meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"checkpoint {self.directory!r} step {step} does not fit "
                      f"this model: {str(e).splitlines()[0][:300]}") from None
    return out["state"], dict(out["meta"])

  def close(self):
    self._mngr.close()


def check_model(meta: dict | None, expect: dict | None, where: str) -> None:
  """Raises if the checkpoint's recorded model differs from the expected one."""
  if not expect or not meta or "model" not in meta:
    return
  got = meta["model"]
  diff = {k: (got.get(k), v) for k, v in expect.items() if got.get(k) != v}
  if diff:
    desc = ", ".join(f"{k}={a!r} (config asks {b!r})" for k, (a, b) in diff.items())
    raise UserError(f"checkpoint {where!r} is of another model: {desc}")


def save_variables(directory: str, variables: Any, meta: dict) -> None:
  """Writes one variable set (e.g. θ_AT or θ_FT) as step 0 of its own folder."""
  ckpt = Checkpointer(directory)
  ckpt.save(0, variables, meta)
  ckpt.close()


def load_variables(directory: str, target: Any, expect_model: dict | None = None
                   ) -> tuple[Any, dict]:
  if not os.path.isdir(directory):
    raise UserError(f"checkpoint {directory!r} does not exist")
  ckpt = Checkpointer(directory)
  try:
    return ckpt.restore(target, expect_model)
  finally:
    ckpt.close()


def has_checkpoint(directory: str) -> bool:
  """Whether `directory` holds an Orbax step (the manager is closed again)."""
  if not os.path.isdir(directory):
    return False
  ckpt = Checkpointer(directory)
  try:
    return ckpt.latest_step() is not None
  finally:
    ckpt.close()


TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt", ".safetensors")


def is_torch_file(path: str) -> bool:
  """A PyTorch state_dict file (by suffix) rather than our Orbax folder."""
  return str(path).endswith(TORCH_SUFFIXES)


def load_model_variables(path: str, model, info, expect_model: dict | None = None
                         ) -> tuple[Any, str]:
  """The variables a user means by `path`, for `model` on data `info`:

  - a PyTorch state_dict file (`.pth`/`.pt`/`.safetensors`), read without
    running code from it (`rift_jax.models.convert`);
  - a `launch.train` workdir (its best-by-validation checkpoint);
  - a variables folder (`save_variables`), e.g. a pipeline's θ_FT.

  Returns (variables, the path read).
  """
  from rift_jax import workdir
  from rift_jax.models import convert
  path = os.path.expanduser(str(path))
  if is_torch_file(path):
    return convert.import_checkpoint(path, model, info.image_shape), path
  folder = workdir.checkpoint_dir(path)
  if not os.path.isdir(folder):
    raise UserError(f"checkpoint {path!r} does not exist (give a PyTorch "
                    "file, a launch.train workdir or a variables folder)")
  if not has_checkpoint(folder):
    raise UserError(f"checkpoint {path!r} holds no checkpoint (give a PyTorch "
                    "file, a launch.train workdir or a variables folder)")
  target = convert.variable_shapes(model, info.image_shape)
  variables, _ = load_variables(folder, target, expect_model)
  return variables, folder

"""PyTorch state_dicts <-> our Flax variables (import and export).

Our Flax names map to the PyTorch names of the RiFT / Bag-of-Tricks /
TRADES / RobustBench code by `models.path_to_name` (`layer2_1/conv2` ->
`layer2.1.conv2`, `block1/layer_3/convShortcut` -> `block1.layer.3.convShortcut`),
and per leaf:

  params/<m>/kernel (conv, HWIO)   <- <m>.weight  [O, I, H, W] transposed (2, 3, 1, 0)
  params/<m>/kernel (dense, [in, out]) <- <m>.weight [out, in] transposed
  params/<m>/bias                  <- <m>.bias
  params/<m>/scale (BatchNorm)     <- <m>.weight
  batch_stats/<m>/mean, var        <- <m>.running_mean, <m>.running_var

On import a 'module.' prefix (DataParallel) is stripped, `num_batches_tracked`
is ignored, a checkpoint wrapped as {'state_dict'|'model'|'net'|
'model_state_dict': ...} is unwrapped, and TRADES' never-used `sub_block1.*`
WRN weights are dropped. Export writes `num_batches_tracked` (0) so PyTorch's
strict `load_state_dict` accepts the file.

Normalisation: our models normalise inside with the data set's mean/std; many
PyTorch checkpoints expect inputs already normalised the same way (then build
our model with that mean/std), RobustBench models take [0, 1] inputs (build it
with mean 0, std 1).

torch is optional: `.safetensors` files are read and written with
`safetensors.numpy`; only `.pth`/`.pt` need torch, imported when used. Loading
uses `torch.load(weights_only=True)`: no code from the file is run.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from rift_jax import models
from rift_jax.errors import UserError

_WRAPPERS = ("state_dict", "model_state_dict", "model", "net")
_IGNORED_PREFIXES = ("sub_block1.",)   # TRADES WRN: built, never used
_TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt")


# ------------------------------------------------------------------ files
def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads `.safetensors` (no torch needed) or `.pth`/`.pt` (torch) as
  name -> numpy array, unwrapped and with 'module.' stripped."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise UserError(f"PyTorch checkpoint {path!r} does not exist")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    try:
      raw = load_file(path)
    except Exception as e:  # noqa: BLE001 (corrupt or foreign file)
      raise UserError(f"{path!r} is not a readable safetensors file: "
                      f"{str(e).splitlines()[0]}") from None
  elif path.endswith(_TORCH_SUFFIXES):
    torch = _import_torch(path)
    try:
      raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
      raise UserError(f"{path!r} cannot be read by torch.load(weights_only="
                      f"True): {str(e).splitlines()[0][:200]}") from None
  else:
    raise UserError(f"checkpoint {path!r} has an unknown suffix; use one of: "
                    + ", ".join((".safetensors",) + _TORCH_SUFFIXES))
  return clean_state_dict(raw, path)


def _import_torch(why: str):
  try:
    import torch
  except ImportError:
    raise UserError(f"reading {why!r} needs PyTorch (pip install .[torch]); "
                    "or convert it to .safetensors elsewhere") from None
  return torch


def clean_state_dict(raw: Mapping[str, Any], where: str = "state_dict"
                     ) -> dict[str, np.ndarray]:
  """Unwraps {'state_dict': ...}-style checkpoints, strips 'module.', drops
  num_batches_tracked, and turns tensors into numpy arrays."""
  while isinstance(raw, Mapping):
    inner = [k for k in _WRAPPERS if isinstance(raw.get(k), Mapping)]
    if not inner or any(hasattr(v, "shape") for v in raw.values()):
      break
    raw = raw[inner[0]]
  if not isinstance(raw, Mapping):
    raise UserError(f"{where!r} does not hold a state_dict (a name -> tensor "
                    f"mapping) but {type(raw).__name__}")
  out = {}
  for k, v in raw.items():
    if not hasattr(v, "shape"):
      continue  # e.g. an epoch number stored beside the weights
    k = k[len("module."):] if k.startswith("module.") else k
    if k.endswith("num_batches_tracked") or k.startswith(_IGNORED_PREFIXES):
      continue
    if hasattr(v, "detach"):  # a torch tensor
      v = v.detach().cpu().float().numpy() if v.is_floating_point() else \
          v.detach().cpu().numpy()
    out[k] = np.asarray(v)
  return out


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str) -> None:
  """Writes `.safetensors` (no torch needed) or `.pth`/`.pt` (torch.save of
  tensors, loadable with weights_only=True)."""
  path = os.path.expanduser(path)
  arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file
    save_file(arrays, path)
  elif path.endswith(_TORCH_SUFFIXES):
    torch = _import_torch(path)
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
  else:
    raise UserError(f"output {path!r} has an unknown suffix; use one of: "
                    + ", ".join((".safetensors",) + _TORCH_SUFFIXES))


# ------------------------------------------------------------- mapping
def _leaves(variables) -> dict[tuple[str, ...], Any]:
  flat = jax.tree_util.tree_flatten_with_path(dict(variables))[0]
  return {tuple(models._key_name(k) for k in path): v for path, v in flat}


def torch_name(path: tuple[str, ...]) -> str:
  """('params', 'layer1_0', 'bn1', 'scale') -> 'layer1.0.bn1.weight'."""
  collection, *module, leaf = path
  suffix = {("params", "kernel"): "weight", ("params", "scale"): "weight",
            ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
            ("batch_stats", "var"): "running_var"}.get((collection, leaf))
  if suffix is None:
    raise ValueError(f"no PyTorch name for variable {'/'.join(path)}")
  return models.path_to_name(module) + "." + suffix


def _to_flax(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  elif value.ndim == 2:
    value = value.T                       # [out, in] -> [in, out]
  if tuple(value.shape) != tuple(shape):
    raise UserError(f"{name} has shape {_torch_shape(value.shape)} in the "
                    f"checkpoint but the model needs {_torch_shape(shape)}; "
                    "check the architecture, width and number of classes")
  return value


def _torch_shape(flax_shape) -> tuple[int, ...]:
  s = tuple(flax_shape)
  return (s[3], s[2], s[0], s[1]) if len(s) == 4 else s[::-1]


def _short(names, limit: int = 6) -> str:
  names = sorted(names)
  more = len(names) - limit
  return ", ".join(names[:limit]) + (f" ... (+{more} more)" if more > 0 else "")


def from_state_dict(state_dict: Mapping[str, np.ndarray], target: Any,
                    where: str = "state_dict") -> dict:
  """Variables shaped like `target` (arrays or shape structs, e.g. from
  `variable_shapes`) with the values of `state_dict` (cleaned: see
  `clean_state_dict`).

  Raises UserError listing missing and unexpected keys (shortened) or the
  first shape mismatch.
  """
  state_dict = clean_state_dict(state_dict, where)
  leaves = _leaves(target)
  names = {torch_name(p): p for p in leaves}
  missing = set(names) - set(state_dict)
  unexpected = set(state_dict) - set(names)
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing keys: {_short(missing)}")
    if unexpected:
      parts.append(f"unexpected keys: {_short(unexpected)}")
    raise UserError(f"{where} does not fit this model; " + "; ".join(parts))
  values = {p: _to_flax(n, state_dict[n], leaves[p].shape).astype(
      leaves[p].dtype) for n, p in names.items()}
  out: dict = {}
  for path, v in values.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = jax.numpy.asarray(v)
  return out


def to_state_dict(variables: Any) -> dict[str, np.ndarray]:
  """Our variables -> a PyTorch state_dict of numpy arrays (OIHW convs,
  [out, in] linears, BN running stats, num_batches_tracked = 0)."""
  out = {}
  for path, v in _leaves(variables).items():
    v = np.asarray(v)
    if v.ndim == 4:
      v = v.transpose(3, 2, 0, 1)
    elif v.ndim == 2:
      v = v.T
    name = torch_name(path)
    out[name] = np.ascontiguousarray(v)
    if name.endswith(".running_mean"):
      out[name[:-len("running_mean")] + "num_batches_tracked"] = np.zeros(
          (), np.int64)
  return out


def variable_shapes(model, input_shape) -> dict:
  """The variables' structure as shape/dtype structs, without running the
  initialisers (XLA compiles a deep net's init for tens of seconds on CPU)."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jax.numpy.float32)
  return dict(jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x))


def import_checkpoint(path: str, model, input_shape) -> dict:
  """Reads a PyTorch checkpoint file into variables for `model` (Flax)."""
  return from_state_dict(load_state_dict(path),
                         variable_shapes(model, input_shape), repr(path))


def export_checkpoint(variables: Any, path: str) -> None:
  """Writes our variables as a PyTorch state_dict file."""
  save_state_dict(to_state_dict(variables), path)

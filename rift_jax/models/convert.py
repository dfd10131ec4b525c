"""PyTorch state_dicts <-> our Flax variables (import and export).

Our Flax names map to the PyTorch names of the RiFT / Bag-of-Tricks /
TRADES / RobustBench code by `models.path_to_name` (`layer2_1/conv2` ->
`layer2.1.conv2`, `block1/layer_3/convShortcut` -> `block1.layer.3.convShortcut`,
`layer_0/block_1/conv__0` -> `layer.0.block.1.conv_0`), and per leaf:

  params/<m>/kernel (conv, HWIO)   <- <m>.weight  [O, I, H, W] transposed (2, 3, 1, 0)
  params/<m>/kernel (dense, [in, out]) <- <m>.weight [out, in] transposed
  params/<m>/bias                  <- <m>.bias
  params/<m>/scale (BatchNorm)     <- <m>.weight
  batch_stats/<m>/mean, var        <- <m>.running_mean, <m>.running_var

Import (`import_checkpoint`, `from_state_dict`): a checkpoint wrapped as
{'state_dict'|'model_state_dict'|'model'|'net': ...} is unwrapped, the
prefixes 'module.' (DataParallel), 'model.' and '_orig_mod.' (torch.compile)
are stripped, and these entries are not model variables: `num_batches_tracked`,
TRADES' never-used `sub_block1.*` WRN weights, input-normalisation buffers
(`mean`/`std`, `mu`/`sigma`, e.g. `normalize.mean`; `import_checkpoint`
checks that they equal the model's mean/std) and non-tensor values. A file
that does not fit the model gets one `UserError` line naming the first
missing / unexpected key or the first shape mismatch, and the built-in
architectures that would fit the file (`fitting_models`).

Export, two ways:
- `export_checkpoint(variables, path)` / `to_state_dict`: our own naming
  (RiFT / kuangliu / TRADES / RobustBench, as above), `num_batches_tracked`
  = 0, float32, no wrapper: strict `load_state_dict` into the PyTorch model.
- `export_like(variables, layout, path)`: the exact layout of the file the
  weights came from (`Layout`, from `read_checkpoint` / `import_with_layout`,
  or that file's path): its wrapper and the wrapper's other entries (epoch,
  optimizer state, ... as read, stale for new weights), its key prefix, key
  order and dtypes, and its extra entries with their values
  (`num_batches_tracked`, mean/std buffers, `sub_block1`, `_metadata`), so
  `model.load_state_dict(torch.load(path)[...], strict=True)` works in the
  user's code unchanged. `.pth` files are `torch.save`d tensors and plain
  containers, loadable with `torch.load(weights_only=True)`. A `.safetensors`
  output holds the state_dict itself (keys with the prefix, dtypes, tensor
  extras); safetensors cannot hold a wrapper or non-tensor values, so those
  are left out (the source's safetensors metadata is kept).

Normalisation: our models normalise inside with the data set's mean/std; many
PyTorch checkpoints expect inputs already normalised the same way (then build
our model with that mean/std), RobustBench models take [0, 1] inputs: build
ours with mean 0, std 1 for the plain ones, and with the data set's mean/std
for those that normalise inside (DeepMind `dm_*`, and files holding
`mu`/`sigma`).

torch is optional: `.safetensors` files are read and written with
`safetensors.numpy`; only `.pth`/`.pt` need torch, imported when used. Loading
uses `torch.load(weights_only=True)`: no code from the file is run.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from rift_jax import models
from rift_jax.models import zoo
from rift_jax.errors import UserError

_WRAPPERS = ("state_dict", "model_state_dict", "model", "net")
_PREFIXES = ("module.", "model.", "_orig_mod.")
_IGNORED_PREFIXES = ("sub_block1.",)   # TRADES WRN: built, never used
_NORM_BUFFER = re.compile(r"(^|.*\.)(mean|std|mu|sigma)$")
_TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt")


# ------------------------------------------------------------------ layout
@dataclasses.dataclass
class Layout:
  """How a checkpoint file stores its state_dict (see `export_like`).

  Keys are the file's own (with any prefix), in file order.
  """
  source: str                       # the file it was read from
  wrapper: tuple[str, ...]          # keys from the file's object to the state_dict
  keys: tuple[str, ...]             # every state_dict entry, file order
  names: dict[str, str]             # file key -> our name (prefix stripped)
  shapes: dict[str, tuple[int, ...]]  # file key -> PyTorch shape (tensors)
  dtypes: dict[str, str]            # file key -> 'float32', 'float16', 'int64', ...
  extras: dict[str, Any]            # file key -> value kept as read (not variables)
  container: Any = None             # the file's object, state_dict slot None
  sd_metadata: Any = None           # the state_dict's `_metadata` (module versions)
  file_metadata: dict[str, str] | None = None  # safetensors header metadata

  @property
  def prefix(self) -> str:
    """The prefix all keys share and import strips ('module.', or '')."""
    stripped = [k[:len(k) - len(self.names[k])] for k in self.keys]
    return stripped[0] if stripped and len(set(stripped)) == 1 else ""


def _strip(key: str) -> str:
  changed = True
  while changed:
    changed = False
    for p in _PREFIXES:
      if key.startswith(p):
        key, changed = key[len(p):], True
  return key


def _is_extra(name: str, value: Any) -> bool:
  return (not hasattr(value, "shape") or name.endswith("num_batches_tracked")
          or name.startswith(_IGNORED_PREFIXES)
          or _NORM_BUFFER.fullmatch(name) is not None)


def _dtype_name(v) -> str:
  return str(v.dtype).replace("torch.", "")


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, "detach"):  # a torch tensor; bfloat16 etc. -> float32
    v = v.detach().cpu()
    return v.float().numpy() if v.is_floating_point() else v.numpy()
  return np.asarray(v)


def _unwrap(raw: Any, where: str) -> tuple[Mapping, tuple[str, ...]]:
  path: tuple[str, ...] = ()
  # A state_dict's values are tensors, never mappings: a mapping under a
  # wrapper key is the state_dict (or another wrapper), whatever sits beside.
  while isinstance(raw, Mapping):
    inner = [k for k in _WRAPPERS if isinstance(raw.get(k), Mapping)]
    if not inner:
      break
    raw, path = raw[inner[0]], path + (inner[0],)
  if not isinstance(raw, Mapping):
    raise UserError(f"{where} does not hold a state_dict (a name -> tensor "
                    f"mapping) but {type(raw).__name__}")
  return raw, path


def _replace_at(obj: Any, path: Sequence[str], value: Any) -> Any:
  """A copy of nested mappings `obj` with `obj[path] = value` (no mutation)."""
  if not path:
    return value
  new = type(obj)(obj) if isinstance(obj, dict) else dict(obj)
  new[path[0]] = _replace_at(obj[path[0]], path[1:], value)
  return new


def layout_of(raw: Any, source: str = "state_dict",
              file_metadata: Mapping[str, str] | None = None) -> Layout:
  """The `Layout` of a loaded checkpoint object (what `torch.load` or
  `safetensors` returned)."""
  sd, wrapper = _unwrap(raw, source)
  keys = tuple(sd)
  names = {k: _strip(k) for k in keys}
  extras = {k: (_to_numpy(v) if hasattr(v, "shape") else v)
            for k, v in sd.items() if _is_extra(names[k], v)}
  shapes = {k: tuple(int(d) for d in v.shape) for k, v in sd.items()
            if hasattr(v, "shape")}
  dtypes = {k: _dtype_name(v) for k, v in sd.items() if hasattr(v, "dtype")}
  return Layout(source=source, wrapper=wrapper, keys=keys, names=names,
                shapes=shapes, dtypes=dtypes, extras=extras,
                container=_replace_at(raw, wrapper, None) if wrapper else None,
                sd_metadata=getattr(sd, "_metadata", None),
                file_metadata=dict(file_metadata) if file_metadata else None)


# ------------------------------------------------------------------ files
def _read_raw(path: str) -> tuple[Any, dict[str, str] | None]:
  if not os.path.isfile(path):
    raise UserError(f"PyTorch checkpoint {path!r} does not exist")
  if path.endswith(".safetensors"):
    from safetensors import safe_open
    try:
      with safe_open(path, "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    except Exception as e:  # noqa: BLE001 (corrupt or foreign file)
      raise UserError(f"{path!r} is not a readable safetensors file: "
                      f"{str(e).splitlines()[0]}") from None
  if path.endswith(_TORCH_SUFFIXES):
    torch = _import_torch(path)
    try:
      return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as e:  # noqa: BLE001
      raise UserError(f"{path!r} cannot be read by torch.load(weights_only="
                      f"True): {str(e).splitlines()[0][:200]}") from None
  raise UserError(f"checkpoint {path!r} has an unknown suffix; use one of: "
                  + ", ".join((".safetensors",) + _TORCH_SUFFIXES))


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], Layout]:
  """Reads `.safetensors` (no torch needed) or `.pth`/`.pt` (torch): the
  cleaned state_dict (as `load_state_dict`) and the file's `Layout`."""
  path = os.path.expanduser(path)
  raw, meta = _read_raw(path)
  return clean_state_dict(raw, repr(path)), layout_of(raw, repr(path), meta)


def read_layout(path: str) -> Layout:
  """The `Layout` of a checkpoint file."""
  return read_checkpoint(path)[1]


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads `.safetensors` (no torch needed) or `.pth`/`.pt` (torch) as
  name -> numpy array, unwrapped, prefixes stripped, without
  num_batches_tracked (see `clean_state_dict`)."""
  return read_checkpoint(path)[0]


def _import_torch(why: str):
  try:
    import torch
  except ImportError:
    raise UserError(f"reading {why!r} needs PyTorch (pip install .[torch]); "
                    "or convert it to .safetensors elsewhere") from None
  return torch


def clean_state_dict(raw: Mapping[str, Any], where: str = "state_dict"
                     ) -> dict[str, np.ndarray]:
  """Unwraps {'state_dict': ...}-style checkpoints, strips 'module.' (and
  'model.', '_orig_mod.'), drops num_batches_tracked, TRADES' `sub_block1`
  and non-tensor values, and turns tensors into numpy arrays (floats as
  float32). Normalisation buffers (`mean`, `std`, ...) are kept."""
  sd, _ = _unwrap(raw, where)
  out = {}
  for k, v in sd.items():
    if not hasattr(v, "shape"):
      continue  # e.g. an epoch number stored beside the weights
    k = _strip(k)
    if k.endswith("num_batches_tracked") or k.startswith(_IGNORED_PREFIXES):
      continue
    out[k] = _to_numpy(v)
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
    torch.save({k: torch.from_numpy(np.array(v, order="C"))  # writable copies
                for k, v in arrays.items()}, path)
  else:
    raise UserError(f"output {path!r} has an unknown suffix; use one of: "
                    + ", ".join((".safetensors",) + _TORCH_SUFFIXES))


# ------------------------------------------------------------- mapping
def _leaves(variables) -> dict[tuple[str, ...], Any]:
  flat = jax.tree_util.tree_flatten_with_path(dict(variables))[0]
  return {tuple(zoo._key_name(k) for k in path): v for path, v in flat}


def torch_name(path: tuple[str, ...]) -> str:
  """('params', 'layer1_0', 'bn1', 'scale') -> 'layer1.0.bn1.weight'."""
  collection, *module, leaf = path
  suffix = {("params", "kernel"): "weight", ("params", "scale"): "weight",
            ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
            ("batch_stats", "var"): "running_var"}.get((collection, leaf))
  if suffix is None:
    raise ValueError(f"no PyTorch name for variable {'/'.join(path)}")
  return models.path_to_name(module) + "." + suffix


def _torch_shape(flax_shape) -> tuple[int, ...]:
  s = tuple(int(d) for d in flax_shape)
  return (s[3], s[2], s[0], s[1]) if len(s) == 4 else s[::-1]


def _to_torch_layout(v: np.ndarray) -> np.ndarray:
  if v.ndim == 4:
    return v.transpose(3, 2, 0, 1)   # HWIO -> OIHW
  return v.T if v.ndim == 2 else v    # [in, out] -> [out, in]


def _to_flax(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return value.T if value.ndim == 2 else value


def expected_shapes(target: Any) -> dict[str, tuple[int, ...]]:
  """Our variables (arrays or shape structs) -> {PyTorch name: PyTorch
  shape}, in network order."""
  out = {torch_name(p): _torch_shape(v.shape) for p, v in _leaves(target).items()}
  return dict(sorted(out.items(), key=lambda kv: zoo._network_order(
      kv[0].rsplit(".", 1)[0])))


def _shape_str(s) -> str:
  return "(" + ", ".join(str(d) for d in s) + ")"


def _more(n: int) -> str:
  return f" (+{n - 1} more)" if n > 1 else ""


def _mismatch(state_dict: Mapping[str, Any], expected: Mapping[str, tuple]
              ) -> str | None:
  """The first way `state_dict` (cleaned, no normalisation buffers) does not
  fit `expected` ({name: PyTorch shape}), or None."""
  missing = [n for n in expected if n not in state_dict]
  unexpected = [n for n in state_dict if n not in expected]
  parts = []
  if missing:
    parts.append(f"missing key {missing[0]}{_more(len(missing))}")
  if unexpected:
    parts.append(f"unexpected key {unexpected[0]}{_more(len(unexpected))}")
  if parts:
    return "; ".join(parts)
  for n, v in state_dict.items():
    if tuple(v.shape) != tuple(expected[n]):
      return (f"{n} has shape {_shape_str(v.shape)} in the checkpoint but the "
              f"model needs {_shape_str(expected[n])}")
  return None


def _model_part(state_dict: Mapping[str, Any], expected: Mapping[str, Any]
                ) -> dict[str, Any]:
  """Drops normalisation buffers that are not model variables."""
  return {k: v for k, v in state_dict.items()
          if k in expected or not _NORM_BUFFER.fullmatch(k)}


# ------------------------------------------------------ which model fits
def _count(names, pattern: str) -> int:
  rx = re.compile(pattern)
  return len({m[1] for n in names for m in [rx.match(n)] if m})


def _candidates(sd: Mapping[str, np.ndarray]) -> list[tuple[str, int, int, int]]:
  """(model name, width, num_classes, input channels) guessed from the keys."""
  head = next((h for h in models.HEADS if f"{h}.weight" in sd), None)
  stem = next((s for s in models.STEMS if f"{s}.weight" in sd), None)
  if head is None or stem is None or sd[f"{stem}.weight"].ndim != 4:
    return []
  classes = int(sd[f"{head}.weight"].shape[0])
  width, channels = (int(d) for d in sd[f"{stem}.weight"].shape[:2])
  names = list(sd)
  out = []

  def wrn(prefix, group, first_conv):
    n = _count(names, re.escape(group) + r"\.(\d+)\.")
    conv = sd.get(first_conv)
    if n and conv is not None and width and conv.shape[0] % width == 0:
      out.append(f"{prefix}wrn{6 * n + 4}_{conv.shape[0] // width}")

  wrn("", "block1.layer", "block1.layer.0.conv1.weight")
  wrn("dm_", "layer.0.block", "layer.0.block.0.conv_0.weight")
  stages = tuple(_count(names, rf"layer{k}\.(\d+)\.") for k in range(1, 5))
  dm_stages = tuple(_count(names, rf"layer_{k}\.(\d+)\.") for k in range(4))
  for depth, sizes in models.STAGE_SIZES.items():
    if stages == sizes:
      out += [f"resnet{depth}"] + (["preact_resnet18", "wong_preact_resnet18"]
                                   if depth == "18" else [])
    if dm_stages == sizes:
      out.append(f"dm_preact_resnet{depth}")
  if {"conv1.weight", "conv2.weight", "conv3.weight"} <= set(sd):
    out.append("small_cnn")
  return [(n, width, classes, channels) for n in out]


def fitting_models(state_dict: Mapping[str, Any]) -> list[str]:
  """Built-in architectures whose variables fit `state_dict` exactly (keys
  and shapes), as "model.name='dm_wrn28_10' (width 16, 10 classes)"."""
  sd = clean_state_dict(state_dict)
  fits = []
  for name, width, classes, channels in _candidates(sd):
    try:
      model = models.create_model(name, num_classes=max(classes, 2),
                                  width=width)
      expected = expected_shapes(variable_shapes(model, (32, 32, channels)))
    except Exception:  # noqa: BLE001 (a guess that cannot be built)
      continue
    if _mismatch(_model_part(sd, expected), expected) is None:
      fits.append(f"model.name={name!r} (width {width}, {classes} classes)")
  return fits


def _fit_hint(state_dict: Mapping[str, Any]) -> str:
  fits = fitting_models(state_dict)
  if fits:
    return "; the checkpoint fits " + " or ".join(fits)
  return ("; no built-in architecture fits it (model names: "
          + ", ".join(models.MODEL_NAMES) + ")")


# ------------------------------------------------------------ import
def from_state_dict(state_dict: Mapping[str, np.ndarray], target: Any,
                    where: str = "state_dict") -> dict:
  """Variables shaped like `target` (arrays or shape structs, e.g. from
  `variable_shapes`) with the values of `state_dict` (cleaned: see
  `clean_state_dict`; normalisation buffers ignored).

  Raises UserError, one line: the first missing / unexpected key (with how
  many more) or the first shape mismatch, and the architectures that fit.
  """
  state_dict = clean_state_dict(state_dict, where)
  leaves = _leaves(target)
  expected = expected_shapes(target)
  model_sd = _model_part(state_dict, expected)
  problem = _mismatch(model_sd, expected)
  if problem:
    raise UserError(f"{where} does not fit this model: {problem}"
                    + _fit_hint(state_dict))
  out: dict = {}
  for path, leaf in leaves.items():
    value = _to_flax(model_sd[torch_name(path)]).astype(leaf.dtype)
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = jax.numpy.asarray(value)
  return out


def variable_shapes(model, input_shape) -> dict:
  """The variables' structure as shape/dtype structs, without running the
  initialisers (XLA compiles a deep net's init for tens of seconds on CPU)."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jax.numpy.float32)
  return dict(jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x))


def check_normalization(state_dict: Mapping[str, Any], model, where: str
                        ) -> None:
  """Raises UserError if the file normalises inputs inside (`mean`/`std` or
  `mu`/`sigma` buffers) with other statistics than `model.mean`/`model.std`
  (up to 2e-3: published statistics are rounded differently)."""
  ours = {"mean": getattr(model, "mean", None), "std": getattr(model, "std", None)}
  if ours["mean"] is None or ours["std"] is None:
    return
  for key, value in clean_state_dict(state_dict, where).items():
    m = _NORM_BUFFER.fullmatch(key)
    if not m:
      continue
    kind = {"mu": "mean", "sigma": "std"}.get(m[2], m[2])
    theirs = np.asarray(value, np.float64).ravel()
    try:
      mine = np.broadcast_to(np.asarray(ours[kind], np.float64), theirs.shape)
    except ValueError:
      mine = None
    if mine is None or not np.allclose(theirs, mine, rtol=0, atol=2e-3):
      raise UserError(
          f"{where} normalises inputs inside with {key}="
          f"{tuple(round(float(t), 4) for t in theirs)} but the model is built "
          f"with {kind}={tuple(ours[kind])}; build it with the file's "
          "mean/std (the data set's: the PyTorch model expects [0, 1] inputs "
          "and normalises them itself)")


def import_with_layout(path: str, model, input_shape) -> tuple[dict, Layout]:
  """Variables for `model` from a PyTorch checkpoint file, and the file's
  `Layout` (to write fine-tuned weights back with `export_like`)."""
  state_dict, layout = read_checkpoint(path)
  where = repr(os.path.expanduser(path))
  check_normalization(state_dict, model, where)
  return from_state_dict(state_dict, variable_shapes(model, input_shape),
                         where), layout


def import_checkpoint(path: str, model, input_shape) -> dict:
  """Reads a PyTorch checkpoint file into variables for `model` (Flax)."""
  return import_with_layout(path, model, input_shape)[0]


# ------------------------------------------------------------ export
def to_state_dict(variables: Any) -> dict[str, np.ndarray]:
  """Our variables -> a PyTorch state_dict of numpy arrays (OIHW convs,
  [out, in] linears, BN running stats, num_batches_tracked = 0)."""
  out = {}
  for path, v in _leaves(variables).items():
    name = torch_name(path)
    out[name] = np.ascontiguousarray(_to_torch_layout(np.asarray(v)))
    if name.endswith(".running_mean"):
      out[name[:-len("running_mean")] + "num_batches_tracked"] = np.zeros(
          (), np.int64)
  return out


def export_checkpoint(variables: Any, path: str,
                      like: Layout | str | None = None) -> None:
  """Writes our variables as a PyTorch state_dict file; with `like`, in that
  file's layout (see `export_like`)."""
  export_like(variables, like, path)


def _layout_state_dict(variables: Any, layout: Layout) -> dict[str, Any]:
  ours = {k: v for k, v in to_state_dict(variables).items()
          if not k.endswith("num_batches_tracked")}
  out: dict[str, Any] = collections.OrderedDict()
  used = set()
  for key in layout.keys:
    if key in layout.extras:
      out[key] = layout.extras[key]
      continue
    name = layout.names[key]
    if name not in ours:
      raise UserError(f"cannot write in the layout of {layout.source}: it holds "
                      f"{key} but the variables have no {name}; export with the "
                      "architecture the file was imported into")
    if tuple(ours[name].shape) != layout.shapes[key]:
      raise UserError(f"cannot write in the layout of {layout.source}: {key} "
                      f"has shape {_shape_str(layout.shapes[key])} there but "
                      f"{_shape_str(ours[name].shape)} in the variables")
    out[key] = ours[name]
    used.add(name)
  left = [n for n in ours if n not in used]
  if left:
    raise UserError(f"cannot write in the layout of {layout.source}: the "
                    f"variables hold {left[0]}{_more(len(left))}, which the "
                    "file does not")
  return out


def _numpy_dtype(name: str):
  if name == "bfloat16":
    import ml_dtypes
    return ml_dtypes.bfloat16
  return np.dtype(name)


def export_like(variables: Any, layout: Layout | str | None, path: str) -> None:
  """Writes `variables` to `path` in `layout` (a `Layout`, or the path of the
  checkpoint file to copy it from); None: our own naming (`to_state_dict`).

  Every state_dict key of the source comes back in its order, with its
  prefix and dtype; extras (`num_batches_tracked`, mean/std buffers, ...)
  with the values read; `.pth`: inside the source's wrapper with its other
  entries. `.safetensors`: the state_dict only (see the module docstring).
  Raises UserError if the variables do not fit the layout.
  """
  if layout is None:
    save_state_dict(to_state_dict(variables), path)
    return
  if isinstance(layout, (str, os.PathLike)):
    layout = read_layout(os.fspath(layout))
  entries = _layout_state_dict(variables, layout)
  path = os.path.expanduser(path)
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file
    arrays = {k: np.ascontiguousarray(np.asarray(v).astype(
        _numpy_dtype(layout.dtypes[k]))) for k, v in entries.items()
              if k in layout.dtypes}
    save_file(arrays, path, metadata=layout.file_metadata or {"format": "pt"})
    return
  if not path.endswith(_TORCH_SUFFIXES):
    raise UserError(f"output {path!r} has an unknown suffix; use one of: "
                    + ", ".join((".safetensors",) + _TORCH_SUFFIXES))
  torch = _import_torch(path)
  sd = collections.OrderedDict()
  for k, v in entries.items():
    if k in layout.dtypes:
      a = np.asarray(v)
      if a.dtype.name == "bfloat16":  # torch.from_numpy cannot read it
        a = a.astype(np.float32)
      v = torch.from_numpy(np.array(a, order="C")).to(  # a writable copy
          getattr(torch, layout.dtypes[k]))
    sd[k] = v
  if layout.sd_metadata is not None:
    sd._metadata = layout.sd_metadata
  obj = _replace_at(layout.container, layout.wrapper, sd) if layout.wrapper \
      else sd
  torch.save(obj, path)

"""Image classifiers in Flax linen, named like the PyTorch code the papers used.

All models take images `[batch, height, width, channels]` in [0, 1] and
normalise them inside (per-dataset mean/std), so attacks work in pixel space.
`model.apply(variables, x, train=...)` is the pure function everything else
builds on; `train=True` uses batch statistics and returns updated
`batch_stats` when called with `mutable=['batch_stats']`.

Naming rule: a Flax module name never contains '_' except where the PyTorch
name has a '.', so the paper's module names come back by joining the params
path with '.' and replacing '_' with '.' (`layer2_1/conv2/kernel` ->
`layer2.1.conv2`, `block1/layer_3/conv2` -> `block1.layer.3.conv2`,
`layer1_0/shortcut_0` -> `layer1.0.shortcut.0`). `perturbable_modules` lists
every Conv/Dense kernel that way; MRC and fine-tuning use it.

Convolutions use explicit PyTorch-style padding (1 for 3x3, 0 for 1x1) so a
stride-2 convolution sees the same pixels as in PyTorch, and converted
checkpoints give the same logits. The convolution layer and its CPU-friendly
input gradient are in `rift_jax.conv`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rift_jax import conv
from rift_jax.errors import check_choice, check_range


def _conv(features: int, kernel: int, stride: int, name: str, impl: str):
  return conv.Conv(features, kernel, stride, impl, name=name)


def _bn(train: bool, name: str):
  # momentum=0.9 here is PyTorch's momentum=0.1; eps matches PyTorch's 1e-5.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, name=name)


class _Normalize(nn.Module):
  mean: Sequence[float]
  std: Sequence[float]

  def __call__(self, x):
    mean = jnp.asarray(self.mean, x.dtype)
    std = jnp.asarray(self.std, x.dtype)
    return (x - mean) / std


class BasicBlock(nn.Module):
  """Post-activation ResNet block (He et al. 2016), as in the RiFT code."""
  features: int
  stride: int = 1
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    out = _conv(self.features, 3, self.stride, "conv1", self.conv_impl)(x)
    out = nn.relu(_bn(train, "bn1")(out))
    out = _conv(self.features, 3, 1, "conv2", self.conv_impl)(out)
    out = _bn(train, "bn2")(out)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, self.stride, "shortcut_0",
                       self.conv_impl)(x)
      shortcut = _bn(train, "shortcut_1")(shortcut)
    return nn.relu(out + shortcut)


class PreActBlock(nn.Module):
  """Pre-activation block (He et al. 2016b), as in the CURE / Bag-of-Tricks code."""
  features: int
  stride: int = 1
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    out = nn.relu(_bn(train, "bn1")(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, self.stride, "shortcut_0",
                       self.conv_impl)(out)
    out = _conv(self.features, 3, self.stride, "conv1", self.conv_impl)(out)
    out = nn.relu(_bn(train, "bn2")(out))
    out = _conv(self.features, 3, 1, "conv2", self.conv_impl)(out)
    return out + shortcut


class ResNet(nn.Module):
  """CIFAR ResNet: 3x3 stride-1 stem, no max-pool, four stages, linear head."""
  stage_sizes: Sequence[int]
  num_classes: int
  width: int = 64
  preact: bool = False
  mean: Sequence[float] = (0.0,)
  std: Sequence[float] = (1.0,)
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    block = PreActBlock if self.preact else BasicBlock
    x = _Normalize(self.mean, self.std)(x)
    x = _conv(self.width, 3, 1, "conv1", self.conv_impl)(x)
    if not self.preact:
      x = nn.relu(_bn(train, "bn1")(x))
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        x = block(self.width * 2**i, stride, self.conv_impl,
                  name=f"layer{i + 1}_{j}")(x, train)
    if self.preact:
      x = nn.relu(_bn(train, "bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="linear")(x)


class WideBasic(nn.Module):
  """Wide ResNet block in the TRADES / RobustBench layout."""
  features: int
  stride: int
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    equal_in_out = x.shape[-1] == self.features and self.stride == 1
    act = nn.relu(_bn(train, "bn1")(x))
    out = _conv(self.features, 3, self.stride, "conv1", self.conv_impl)(act)
    out = nn.relu(_bn(train, "bn2")(out))
    out = _conv(self.features, 3, 1, "conv2", self.conv_impl)(out)
    if equal_in_out:
      return x + out
    shortcut = _conv(self.features, 1, self.stride, "convShortcut", self.conv_impl)
    return shortcut(act) + out


class _WideGroup(nn.Module):
  features: int
  num_blocks: int
  stride: int
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    for j in range(self.num_blocks):
      x = WideBasic(self.features, self.stride if j == 0 else 1, self.conv_impl,
                    name=f"layer_{j}")(x, train)
    return x


class WideResNet(nn.Module):
  """WRN-depth-k (Zagoruyko & Komodakis), names as RobustBench's `block1.layer.3.conv2`."""
  depth: int = 34
  widen_factor: int = 10
  num_classes: int = 10
  width: int = 16
  mean: Sequence[float] = (0.0,)
  std: Sequence[float] = (1.0,)
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = (self.depth - 4) // 6
    widths = [self.width * self.widen_factor * 2**i for i in range(3)]
    x = _Normalize(self.mean, self.std)(x)
    x = _conv(self.width, 3, 1, "conv1", self.conv_impl)(x)
    for i, w in enumerate(widths):
      x = _WideGroup(w, n, 1 if i == 0 else 2, self.conv_impl,
                     name=f"block{i + 1}")(x, train)
    x = nn.relu(_bn(train, "bn1")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="fc")(x)


class SmallCNN(nn.Module):
  """A small conv net for CPU runs: three conv-BN-ReLU stages and a linear head."""
  num_classes: int
  width: int = 16
  mean: Sequence[float] = (0.0,)
  std: Sequence[float] = (1.0,)
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _Normalize(self.mean, self.std)(x)
    for i in range(3):
      x = _conv(self.width * 2**i, 3, 1 if i == 0 else 2, f"conv{i + 1}",
                self.conv_impl)(x)
      x = nn.relu(_bn(train, f"bn{i + 1}")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="linear")(x)


MODEL_NAMES = ("resnet18", "resnet34", "preact_resnet18", "wrn34_10", "small_cnn")


def create_model(name: str, *, num_classes: int, width: int | None = None,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                 conv_impl: str = "auto") -> nn.Module:
  """Builds a model by name. `width` is the base width (ResNet 64, WRN 16, CNN 16).
  `conv_impl`: see `rift_jax.conv` ('xla' where forward-mode autodiff is needed)."""
  check_choice("model.name", name, MODEL_NAMES)
  check_range("model.num_classes", num_classes, 2)
  check_choice("model.conv_impl", conv_impl, conv.IMPLS)
  kw = dict(num_classes=num_classes, mean=tuple(mean), std=tuple(std),
            conv_impl=conv_impl)
  if width is not None:
    check_range("model.width", width, 1)
    kw["width"] = int(width)
  if name == "resnet18":
    return ResNet((2, 2, 2, 2), **kw)
  if name == "resnet34":
    return ResNet((3, 4, 6, 3), **kw)
  if name == "preact_resnet18":
    return ResNet((2, 2, 2, 2), preact=True, **kw)
  if name == "wrn34_10":
    return WideResNet(34, 10, **kw)
  return SmallCNN(**kw)


def init_variables(model: nn.Module, rng: jax.Array, input_shape: Sequence[int]
                   ) -> dict[str, Any]:
  """Variables `{'params': ..., 'batch_stats': ...}` for inputs `[1, *input_shape]`."""
  variables = jax.jit(model.init, static_argnames="train")(
      rng, jnp.zeros((1, *input_shape), jnp.float32), train=False)
  return jax.tree_util.tree_map(lambda a: a, dict(variables))


# --------------------------------------------------------------------------
# Module names <-> params paths.


def _key_name(k) -> str:
  return str(getattr(k, "key", getattr(k, "name", k)))


def path_to_name(path: Sequence[str]) -> str:
  """('layer2_1', 'conv2') -> 'layer2.1.conv2' (the kernel leaf name dropped)."""
  return ".".join(p.replace("_", ".") for p in path)


def perturbable_modules(params) -> dict[str, tuple[str, ...]]:
  """Every Conv and Dense kernel, in network order: paper name -> params path.

  The path ends with 'kernel'. BatchNorm scales/biases and Dense biases are
  never listed: RiFT perturbs and fine-tunes weight kernels only.
  """
  out = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = tuple(_key_name(k) for k in path)
    if keys[-1] == "kernel":
      out[path_to_name(keys[:-1])] = keys
  return dict(sorted(out.items(), key=lambda item: _network_order(item[0])))


def _network_order(name: str):
  # Flax stores params sorted by name; put the stem first, the head last and
  # compare numbers as numbers in between ('layer.10' after 'layer.9').
  import re
  rank = 0 if name == "conv1" else 2 if name in ("linear", "fc") else 1
  parts = tuple((0, int(t), "") if t.isdigit() else (1, 0, t)
                for t in re.split(r"[.]", name))
  return rank, parts


def get_path(tree, path: Sequence[str]):
  for k in path:
    tree = tree[k]
  return tree


def set_path(tree, path: Sequence[str], value):
  """Returns a copy of nested dict `tree` with `tree[path] = value` (no mutation)."""
  if not path:
    return value
  new = dict(tree)
  new[path[0]] = set_path(tree[path[0]], path[1:], value)
  return new


def module_mask(params, names: Sequence[str]):
  """Bool pytree like `params`: True exactly at the kernels of `names`."""
  modules = perturbable_modules(params)
  wanted = {tuple(modules[n]) for n in names}

  def mark(path, _):
    return tuple(_key_name(k) for k in path) in wanted
  return jax.tree_util.tree_map_with_path(mark, params)


def resolve_modules(params, include: str | Sequence[str] | None = None,
                    exclude: str | None = None) -> list[str]:
  """Module names selected by a list of exact names or include/exclude regexes.

  Raises UserError naming the bad module and listing the valid ones.
  """
  import re

  from rift_jax.errors import UserError
  names = list(perturbable_modules(params))
  if include is None or include == "" or include == ".*":
    chosen = names
  elif isinstance(include, str):
    chosen = [n for n in names if re.fullmatch(include, n)]
  else:
    for n in include:
      if n not in names:
        raise UserError(f"module {n!r} does not exist; valid modules: "
                        + ", ".join(names))
    chosen = list(include)
  if exclude:
    chosen = [n for n in chosen if not re.fullmatch(exclude, n)]
  if not chosen:
    raise UserError(f"no module matches include={include!r} exclude={exclude!r}; "
                    "valid modules: " + ", ".join(names))
  return chosen


@dataclasses.dataclass(frozen=True)
class ModelFns:
  """The two pure functions training and attacks need, closed over a model."""
  model: nn.Module

  def logits(self, variables, x, train: bool = False):
    """Logits `[batch, classes]`; with train=True, batch statistics are used and
    the running averages are NOT updated (attack passes must not move them)."""
    if train:
      out, _ = self.model.apply(variables, x, train=True, mutable=["batch_stats"])
      return out
    return self.model.apply(variables, x, train=False)

  def logits_and_stats(self, variables, x):
    """Training forward pass: logits and the updated `batch_stats`."""
    out, updates = self.model.apply(variables, x, train=True,
                                    mutable=["batch_stats"])
    return out, updates.get("batch_stats", {})

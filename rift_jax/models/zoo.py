"""Image classifiers in Flax linen, named like the PyTorch code the papers used.

All models take images `[batch, height, width, channels]` in [0, 1] and
normalise them inside (per-dataset mean/std), so attacks work in pixel space.
`model.apply(variables, x, train=...)` is the pure function everything else
builds on; `train=True` uses batch statistics and returns updated
`batch_stats` when called with `mutable=['batch_stats']`.

Naming rule (one place: `flax_name` / `path_to_name`): the params path of a
module, joined with '.', is its PyTorch state_dict / paper name, where in a
Flax module name a single '_' stands for PyTorch's '.' and a doubled '__' for
a literal '_':
  `layer2_1/conv2`               <-> `layer2.1.conv2`        (RiFT ResNet)
  `block1/layer_3/convShortcut`  <-> `block1.layer.3.convShortcut` (TRADES WRN)
  `layer_0/block_1/batchnorm__0` <-> `layer.0.block.1.batchnorm_0` (DeepMind WRN)
  `layer__2_1/conv__2d__1`       <-> `layer_2.1.conv_2d_1`   (DeepMind PreAct)
Models write their PyTorch names and let `flax_name` escape them; every name
without a literal '_' reads as before. `perturbable_modules` lists every
Conv/Dense kernel by that name, in network order; MRC, fine-tuning and
`rift_jax.models.convert` use it.

Architectures (`create_model` names; `MODEL_NAMES` lists the fixed ones):
- `resnet18`, `resnet34`: post-activation CIFAR ResNets (RiFT, kuangliu; also
  RobustBench's `ResNet18`, whose names are the same).
- `preact_resnet18`: pre-activation, projection shortcut on the activated
  input, BN + ReLU before the head (Bag-of-Tricks, CURE; RobustBench's
  `PreActResNet(PreActBlockV2, ..., bn_before_fc=True)`).
- `wong_preact_resnet18`: RobustBench's default `PreActResNet(PreActBlock,
  [2, 2, 2, 2])` from the code of Wong et al. 2020 ("Fast is better than
  free"; e.g. Andriushchenko2020Understanding, Wong2020Fast): the projection
  shortcut sees the raw block input and there is no BN before the head.
- `wrn<depth>_<k>` (e.g. `wrn28_10`, `wrn34_10`, `wrn70_16`): WRN-depth-k
  (Zagoruyko & Komodakis 2016) as in TRADES / RobustBench's `WideResNet`
  (`block1.layer.0.conv1`, `convShortcut`, `fc`).
- `dm_wrn<depth>_<k>` (e.g. `dm_wrn28_10`, `dm_wrn70_16`): RobustBench's
  `DMWideResNet` for the DeepMind models (Gowal et al. 2020 "Uncovering the
  limits of adversarial training", Rebuffi et al. 2021 "Fixing data
  augmentation to improve adversarial robustness"): Swish, TF-style SAME
  padding (one extra row/column at the bottom/right before a stride-2
  convolution), names `init_conv`, `layer.<g>.block.<i>.{batchnorm_0,
  conv_0, batchnorm_1, conv_1, shortcut}`, `batchnorm`, `logits`.
- `dm_preact_resnet18` / `34`: RobustBench's `DMPreActResNet`
  (Rebuffi2021Fixing_R18): Swish, SAME padding, a 3x3 projection shortcut
  on the raw block input, names `conv_2d`, `layer_<k>.<i>.{batchnorm_0,
  conv_2d_1, batchnorm_1, conv_2d_2, shortcut}`, `batchnorm`, `logits`.
- `small_cnn`: a small net for CPU runs.
`width` is the first convolution's width: ResNets 64, WRNs 16 (then k times
16, 32, 64), DeepMind PreAct 64, CNN 16. RobustBench's DeepMind models
normalise inside with the CIFAR mean/std (non-persistent buffers, not in
their state_dicts); build ours with the data set's mean/std for them. Every
BatchNorm is PyTorch's default (momentum 0.1, eps 1e-5), as in RobustBench's
PyTorch code (DeepMind's JAX originals used decay 0.99 for training).
Global average pooling replaces the PyTorch code's `avg_pool2d(out, 4|8)`:
the same for 32x32 inputs, and also defined for 28x28.

Mixed precision (`create_model(..., dtype='bfloat16')`, config
`model.compute_dtype`; for GPUs and TPUs, as the Flax ImageNet example):
every module computes in `dtype` while its params stay float32
(`param_dtype`), so the optimiser state, checkpoints and converted PyTorch
state_dicts are float32 whatever the compute dtype. The model normalises its
float32 input in float32 and casts only then: the normalised image is
centred at 0, where bfloat16 (relative precision 2^-8) resolves finer steps
than at pixel values near 1, the subtraction of the mean is not rounded in
bfloat16, and `x`, `x_adv`, the ε-ball projection and the input gradient
(the cast's transpose returns it as float32) stay float32 in every attack.
BatchNorm computes batch statistics in float32 and keeps float32 running
statistics (only its output is `dtype`); the logits are cast to float32, so
losses, softmaxes, attack objectives and accuracies are float32. With the
default float32 every cast is a no-op and the program is unchanged.

Convolutions use explicit PyTorch-style padding (1 for 3x3, 0 for 1x1) so a
stride-2 convolution sees the same pixels as in PyTorch, and converted
checkpoints give the same logits. The convolution layer and its CPU-friendly
input gradient are in `rift_jax.models.conv`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rift_jax.models import conv
from rift_jax.errors import UserError, check_choice, check_range


def flax_name(torch_name: str) -> str:
  """A PyTorch module name -> the Flax module name that `path_to_name` reads
  back: '_' doubled, '.' -> '_' (`'layer_0.1'` -> `'layer__0_1'`)."""
  return torch_name.replace("_", "__").replace(".", "_")


def _conv(features: int, kernel: int, stride: int, name: str, impl: str,
          dtype: Any = jnp.float32):
  return conv.Conv(features, kernel, stride, impl, dtype, name=name)


_ACTIVATIONS = {"relu": nn.relu, "swish": nn.swish}


class _SameConv(nn.Module):
  """3x3 convolution padded as RobustBench's DeepMind blocks do before it:
  1 on every side at stride 1, and 0 top/left, 1 bottom/right at stride 2
  (TensorFlow's 'SAME' for even sizes). Params `{'kernel': HWIO}` as `conv.Conv`.
  """
  features: int
  stride: int = 1
  impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", conv.conv_init, (3, 3, x.shape[-1],
                                                   self.features), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.stride == 1:
      return conv.conv2d(x, kernel, 1, 1, self.impl)
    if self.stride != 2:
      raise ValueError(f"stride {self.stride} is not supported (1 or 2)")
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return conv.conv2d(x, kernel, 2, 0, self.impl)


def _bn(train: bool, name: str, dtype: Any = jnp.float32):
  # momentum=0.9 here is PyTorch's momentum=0.1; eps matches PyTorch's 1e-5.
  # Mixed precision: scale/bias params and the running statistics are
  # float32, the batch statistics are computed in float32 (Flax promotes
  # half-precision inputs), only the output is in `dtype`.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


def _to_compute(x, dtype):
  """The model input, normalised in float32, to the compute dtype."""
  return x.astype(dtype)


def _head(num_classes: int, name: str, dtype, x):
  """The linear head (float32 params, `dtype` compute); logits as float32,
  so losses, softmaxes, attack objectives and accuracies are float32."""
  return nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32,
                  name=name)(x).astype(jnp.float32)


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
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    out = _conv(self.features, 3, self.stride, "conv1", self.conv_impl,
                self.dtype)(x)
    out = nn.relu(_bn(train, "bn1", self.dtype)(out))
    out = _conv(self.features, 3, 1, "conv2", self.conv_impl, self.dtype)(out)
    out = _bn(train, "bn2", self.dtype)(out)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, self.stride, "shortcut_0",
                       self.conv_impl, self.dtype)(x)
      shortcut = _bn(train, "shortcut_1", self.dtype)(shortcut)
    return nn.relu(out + shortcut)


class PreActBlock(nn.Module):
  """Pre-activation block (He et al. 2016b), as in the CURE / Bag-of-Tricks code.

  `shortcut_from_input`: the projection shortcut sees the raw block input
  (Wong et al. 2020's `PreActBlock`) instead of relu(bn1(x)).
  """
  features: int
  stride: int = 1
  conv_impl: str = "auto"
  shortcut_from_input: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    out = nn.relu(_bn(train, "bn1", self.dtype)(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, self.stride, "shortcut_0",
                       self.conv_impl, self.dtype)(
                           x if self.shortcut_from_input else out)
    out = _conv(self.features, 3, self.stride, "conv1", self.conv_impl,
                self.dtype)(out)
    out = nn.relu(_bn(train, "bn2", self.dtype)(out))
    out = _conv(self.features, 3, 1, "conv2", self.conv_impl, self.dtype)(out)
    return out + shortcut


class ResNet(nn.Module):
  """CIFAR ResNet: 3x3 stride-1 stem, no max-pool, four stages, linear head.

  preact: pre-activation blocks; then `final_bn` adds BN + ReLU before the
  head (`bn`) and `shortcut_from_input` is passed to `PreActBlock`.
  """
  stage_sizes: Sequence[int]
  num_classes: int
  width: int = 64
  preact: bool = False
  mean: Sequence[float] = (0.0,)
  std: Sequence[float] = (1.0,)
  conv_impl: str = "auto"
  final_bn: bool = True
  shortcut_from_input: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _Normalize(self.mean, self.std)(x)
    x = _to_compute(x, self.dtype)
    x = _conv(self.width, 3, 1, "conv1", self.conv_impl, self.dtype)(x)
    if not self.preact:
      x = nn.relu(_bn(train, "bn1", self.dtype)(x))
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        name = f"layer{i + 1}_{j}"
        if self.preact:
          x = PreActBlock(self.width * 2**i, stride, self.conv_impl,
                          self.shortcut_from_input, name=name,
                          dtype=self.dtype)(x, train)
        else:
          x = BasicBlock(self.width * 2**i, stride, self.conv_impl,
                         name=name, dtype=self.dtype)(x, train)
    if self.preact and self.final_bn:
      x = nn.relu(_bn(train, "bn", self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    return _head(self.num_classes, "linear", self.dtype, x)


class WideBasic(nn.Module):
  """Wide ResNet block in the TRADES / RobustBench layout."""
  features: int
  stride: int
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    equal_in_out = x.shape[-1] == self.features and self.stride == 1
    act = nn.relu(_bn(train, "bn1", self.dtype)(x))
    out = _conv(self.features, 3, self.stride, "conv1", self.conv_impl,
                self.dtype)(act)
    out = nn.relu(_bn(train, "bn2", self.dtype)(out))
    out = _conv(self.features, 3, 1, "conv2", self.conv_impl, self.dtype)(out)
    if equal_in_out:
      return x + out
    shortcut = _conv(self.features, 1, self.stride, "convShortcut",
                     self.conv_impl, self.dtype)
    return shortcut(act) + out


class _WideGroup(nn.Module):
  features: int
  num_blocks: int
  stride: int
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    for j in range(self.num_blocks):
      x = WideBasic(self.features, self.stride if j == 0 else 1, self.conv_impl,
                    name=f"layer_{j}", dtype=self.dtype)(x, train)
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
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = (self.depth - 4) // 6
    widths = [self.width * self.widen_factor * 2**i for i in range(3)]
    x = _Normalize(self.mean, self.std)(x)
    x = _to_compute(x, self.dtype)
    x = _conv(self.width, 3, 1, "conv1", self.conv_impl, self.dtype)(x)
    for i, w in enumerate(widths):
      x = _WideGroup(w, n, 1 if i == 0 else 2, self.conv_impl,
                     name=f"block{i + 1}", dtype=self.dtype)(x, train)
    x = nn.relu(_bn(train, "bn1", self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    return _head(self.num_classes, "fc", self.dtype, x)


class DMBlock(nn.Module):
  """Block of RobustBench's `DMWideResNet` (DeepMind): pre-activation; with a
  1x1 projection `shortcut` on the activated input when the width changes,
  else the raw input is added."""
  features: int
  stride: int
  activation: str = "swish"
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    act = _ACTIVATIONS[self.activation]
    has_shortcut = x.shape[-1] != self.features
    if not has_shortcut and self.stride != 1:
      raise ValueError("a strided DeepMind WRN block needs a width change")
    pre = act(_bn(train, flax_name("batchnorm_0"), self.dtype)(x))
    out = _SameConv(self.features, self.stride, self.conv_impl,
                    name=flax_name("conv_0"), dtype=self.dtype)(pre)
    out = act(_bn(train, flax_name("batchnorm_1"), self.dtype)(out))
    out = _conv(self.features, 3, 1, flax_name("conv_1"), self.conv_impl,
                self.dtype)(out)
    if has_shortcut:
      return _conv(self.features, 1, self.stride, "shortcut",
                   self.conv_impl, self.dtype)(pre) + out
    return x + out


class _DMGroup(nn.Module):
  features: int
  num_blocks: int
  stride: int
  activation: str = "swish"
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(self.num_blocks):
      x = DMBlock(self.features, self.stride if i == 0 else 1, self.activation,
                  self.conv_impl, name=flax_name(f"block.{i}"),
                  dtype=self.dtype)(x, train)
    return x


class DMWideResNet(nn.Module):
  """RobustBench's `DMWideResNet` (Gowal et al. 2020, Rebuffi et al. 2021):
  WRN-depth-k, Swish, SAME padding; `init_conv`, `layer.<g>.block.<i>.*`,
  `batchnorm`, `logits`. `width` is `init_conv`'s (16 in their code)."""
  depth: int = 28
  widen_factor: int = 10
  num_classes: int = 10
  width: int = 16
  activation: str = "swish"
  mean: Sequence[float] = (0.0,)
  std: Sequence[float] = (1.0,)
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = _ACTIVATIONS[self.activation]
    n = (self.depth - 4) // 6
    x = _Normalize(self.mean, self.std)(x)
    x = _to_compute(x, self.dtype)
    x = _conv(self.width, 3, 1, flax_name("init_conv"), self.conv_impl,
              self.dtype)(x)
    for g in range(3):
      x = _DMGroup(self.width * self.widen_factor * 2**g, n, 1 if g == 0 else 2,
                   self.activation, self.conv_impl,
                   name=flax_name(f"layer.{g}"), dtype=self.dtype)(x, train)
    x = act(_bn(train, "batchnorm", self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    return _head(self.num_classes, "logits", self.dtype, x)


class DMPreActBlock(nn.Module):
  """Block of RobustBench's `DMPreActResNet`: pre-activation, SAME padding; a
  3x3 projection `shortcut` of the raw input when stride or width change."""
  features: int
  stride: int
  activation: str = "swish"
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    act = _ACTIVATIONS[self.activation]
    out = act(_bn(train, flax_name("batchnorm_0"), self.dtype)(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = _SameConv(self.features, self.stride, self.conv_impl,
                           name="shortcut", dtype=self.dtype)(x)
    out = _SameConv(self.features, self.stride, self.conv_impl,
                    name=flax_name("conv_2d_1"), dtype=self.dtype)(out)
    out = act(_bn(train, flax_name("batchnorm_1"), self.dtype)(out))
    out = _conv(self.features, 3, 1, flax_name("conv_2d_2"), self.conv_impl,
                self.dtype)(out)
    return out + shortcut


class DMPreActResNet(nn.Module):
  """RobustBench's `DMPreActResNet` (Rebuffi et al. 2021): `conv_2d`,
  `layer_<k>.<i>.*`, `batchnorm`, `logits`; `width` 64 in their code."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_classes: int = 10
  width: int = 64
  activation: str = "swish"
  mean: Sequence[float] = (0.0,)
  std: Sequence[float] = (1.0,)
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = _ACTIVATIONS[self.activation]
    x = _Normalize(self.mean, self.std)(x)
    x = _to_compute(x, self.dtype)
    x = _conv(self.width, 3, 1, flax_name("conv_2d"), self.conv_impl,
              self.dtype)(x)
    for k, n in enumerate(self.stage_sizes):
      for i in range(n):
        x = DMPreActBlock(self.width * 2**k, 2 if (k > 0 and i == 0) else 1,
                          self.activation, self.conv_impl,
                          name=flax_name(f"layer_{k}.{i}"),
                          dtype=self.dtype)(x, train)
    x = act(_bn(train, "batchnorm", self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    return _head(self.num_classes, "logits", self.dtype, x)


class SmallCNN(nn.Module):
  """A small conv net for CPU runs: three conv-BN-ReLU stages and a linear head."""
  num_classes: int
  width: int = 16
  mean: Sequence[float] = (0.0,)
  std: Sequence[float] = (1.0,)
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _Normalize(self.mean, self.std)(x)
    x = _to_compute(x, self.dtype)
    for i in range(3):
      x = _conv(self.width * 2**i, 3, 1 if i == 0 else 2, f"conv{i + 1}",
                self.conv_impl, self.dtype)(x)
      x = nn.relu(_bn(train, f"bn{i + 1}", self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    return _head(self.num_classes, "linear", self.dtype, x)


# `model.compute_dtype`: float32 (the default, bit-identical to the code
# without mixed precision) or bfloat16 compute with float32 params.
COMPUTE_DTYPES = ("float32", "bfloat16")

# The fixed names; `wrn<depth>_<k>` and `dm_wrn<depth>_<k>` are accepted for
# every depth = 6n + 4 and k >= 1 (RobustBench has 28-4 ... 106-16).
MODEL_NAMES = ("resnet18", "resnet34", "preact_resnet18", "wong_preact_resnet18",
               "wrn28_10", "wrn34_10", "wrn34_20", "wrn70_16",
               "dm_wrn28_10", "dm_wrn34_10", "dm_wrn34_20", "dm_wrn70_16",
               "dm_wrn106_16", "dm_preact_resnet18", "dm_preact_resnet34",
               "small_cnn")
_WRN_NAME = re.compile(r"(dm_)?wrn(\d+)_(\d+)")
STAGE_SIZES = {"18": (2, 2, 2, 2), "34": (3, 4, 6, 3)}


def check_name(name: str) -> None:
  """One clear error unless `name` is a model `create_model` builds."""
  m = _WRN_NAME.fullmatch(str(name))
  if name in MODEL_NAMES or (m and int(m[2]) >= 10 and (int(m[2]) - 4) % 6 == 0
                             and int(m[3]) >= 1):
    return
  raise UserError(f"model.name={name!r} is not allowed; choose one of: "
                  + ", ".join(repr(a) for a in MODEL_NAMES)
                  + ", or wrn<depth>_<k> / dm_wrn<depth>_<k> with depth = 6n+4 "
                  "(n >= 1) and k >= 1")


def create_model(name: str, *, num_classes: int, width: int | None = None,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                 conv_impl: str = "auto", dtype: Any = "float32") -> nn.Module:
  """Builds a model by name (see the module docstring for the architectures).

  `width` is the first convolution's width (ResNets 64, WRNs 16, DeepMind
  PreAct 64, CNN 16). `conv_impl`: see `rift_jax.models.conv` ('xla' where
  forward-mode autodiff is needed). `dtype`: the compute dtype, one of
  `COMPUTE_DTYPES` (a name or a dtype); see "Mixed precision" above.
  """
  check_name(name)
  check_range("model.num_classes", num_classes, 2)
  check_choice("model.conv_impl", conv_impl, conv.IMPLS)
  kw = dict(num_classes=num_classes, mean=tuple(mean), std=tuple(std),
            conv_impl=conv_impl, dtype=compute_dtype(dtype))
  if width is not None:
    check_range("model.width", width, 1)
    kw["width"] = int(width)
  wrn = _WRN_NAME.fullmatch(name)
  if wrn:
    cls = DMWideResNet if wrn[1] else WideResNet
    return cls(int(wrn[2]), int(wrn[3]), **kw)
  if name in ("resnet18", "resnet34"):
    return ResNet(STAGE_SIZES[name[-2:]], **kw)
  if name == "preact_resnet18":
    return ResNet((2, 2, 2, 2), preact=True, **kw)
  if name == "wong_preact_resnet18":
    return ResNet((2, 2, 2, 2), preact=True, final_bn=False,
                  shortcut_from_input=True, **kw)
  if name.startswith("dm_preact_resnet"):
    return DMPreActResNet(STAGE_SIZES[name[-2:]], **kw)
  return SmallCNN(**kw)


def compute_dtype(dtype: Any) -> jnp.dtype:
  """'float32' | 'bfloat16' (or the dtypes themselves) -> the jnp dtype;
  anything else is a UserError naming `model.compute_dtype`."""
  name = dtype
  if not isinstance(dtype, str):
    try:
      name = jnp.dtype(dtype).name
    except TypeError:
      pass
  check_choice("model.compute_dtype", name, COMPUTE_DTYPES)
  return jnp.dtype(name)


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
  """Module params path -> PyTorch name, the inverse of `flax_name` per part:
  ('layer2_1', 'conv2') -> 'layer2.1.conv2', ('layer__0_1', 'conv__2d__1') ->
  'layer_0.1.conv_2d_1' (the kernel leaf name dropped)."""
  return ".".join("_".join(piece.replace("_", ".") for piece in p.split("__"))
                  for p in path)


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


STEMS = ("conv1", "init_conv", "conv_2d")
HEADS = ("linear", "fc", "logits")


def _network_order(name: str):
  # Flax stores params sorted by name; put the stem first, the head last and
  # compare numbers as numbers in between ('layer.10' after 'layer.9',
  # 'layer_10' after 'layer_9').
  rank = 0 if name in STEMS else 2 if name in HEADS else 1
  parts = tuple((0, int(t), "") if t.isdigit() else (1, 0, t)
                for t in re.split(r"[._]", name))
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

  # A network cut at one of the root's direct submodules (MRC reuses the
  # part before a module, which Δ on that module cannot change). Inference
  # mode only. The cut's output replaces the submodule's call; under `jit`
  # everything before it is then dead code.
  def call_order(self, variables, x) -> tuple[str, ...]:
    """Names of the root's direct submodules in the order their `__call__`
    runs (inference mode; traced with `jax.eval_shape`, nothing computed)."""
    order: list[str] = []

    def record(next_fun, args, kwargs, ctx):
      path = ctx.module.path
      if ctx.method_name == "__call__" and len(path) == 1 and path[0] not in order:
        order.append(path[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      jax.eval_shape(lambda v, z: self.model.apply(v, z, train=False), variables, x)
    return tuple(order)

  def features(self, variables, x, cut: str):
    """The output of the root's submodule `cut` on `x` (inference mode)."""
    got = []

    def grab(next_fun, args, kwargs, ctx):
      out = next_fun(*args, **kwargs)
      if ctx.method_name == "__call__" and ctx.module.path == (cut,) and not got:
        got.append(out)
      return out

    with nn.intercept_methods(grab):
      self.model.apply(variables, x, train=False)
    return got[0]

  def logits_after(self, variables, feats, cut: str, x_shape):
    """Logits `[batch, classes]` with the output of the root's submodule
    `cut` replaced by `feats` (from `features`); `x_shape` is the image
    shape `[H, W, C]` (the input itself is not needed)."""
    def swap(next_fun, args, kwargs, ctx):
      if ctx.method_name == "__call__" and ctx.module.path == (cut,):
        return feats
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(swap):
      return self.model.apply(
          variables, jnp.zeros((feats.shape[0], *x_shape), jnp.float32),
          train=False)

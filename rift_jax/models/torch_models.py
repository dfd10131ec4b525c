"""PyTorch twins of our models, with the parameter names of the public code.

For taking θ* back to PyTorch (`rift_jax.models.convert.export_like` writes state
dicts these load with `strict=True`), for the cross-checks (converted logits,
attacks against torchattacks) and for `benchmarks/`. Needs torch
(`pip install .[torch]`). The structure and state_dict names follow the
repositories our users' checkpoints come from:
- `ResNet18` / `ResNet34`: post-activation BasicBlock with `shortcut.0` (1x1
  conv) and `shortcut.1` (BN), head `linear` (RiFT, kuangliu-style CIFAR code).
- `PreActResNet18`: pre-activation blocks, `shortcut.0` conv only, final `bn`,
  head `linear` (Bag-of-Tricks, CURE).
- `WongPreActResNet18`: RobustBench's default `PreActResNet(PreActBlock, ...)`
  (Wong et al. 2020): the projection shortcut sees the raw block input, no
  final BN.
- `WideResNet` (34-10): `block1.layer.0.{bn1,conv1,bn2,conv2,convShortcut}`,
  final `bn1`, head `fc` (TRADES / RobustBench). TRADES' unused `sub_block1`
  is optional (`sub_block1=True`) so its checkpoints can be mimicked.
- `DMWideResNet`: the DeepMind WRN of RobustBench (Gowal et al. 2020,
  Rebuffi et al. 2021), as described there: Swish (SiLU), `init_conv`,
  `layer.<g>.block.<i>.{batchnorm_0, conv_0, batchnorm_1, conv_1, shortcut}`
  with the input of every 3x3 `conv_0` padded by hand (1 on every side at
  stride 1; 0 left/top and 1 right/bottom at stride 2, TensorFlow's 'SAME'),
  a 1x1 `shortcut` on the activated input only where the width changes,
  final `batchnorm`, head `logits`.
- `DMPreActResNet`: RobustBench's DeepMind PreAct ResNet-18/34 (Rebuffi et
  al. 2021): `conv_2d`, `layer_<k>.<i>.{batchnorm_0, conv_2d_1, batchnorm_1,
  conv_2d_2, shortcut}` (a 3x3 SAME-padded shortcut on the raw block input),
  `batchnorm`, `logits`.

Differences from those files, all irrelevant to the weights: a global average
pool instead of `avg_pool2d(out, 4 or 8)` (same for 32x32 inputs, and also
defined for 28x28), configurable widths and input channels, and optional
per-channel normalisation inside (`mean`/`std` non-persistent buffers, so they
are not in the state_dict), as our models normalise inside. The DeepMind
models take `persistent_stats=True` to keep `mean`/`std` ([C, 1, 1]) in the
state_dict, as RobustBench's version of January 2022 did (some checkpoint
files hold them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Normalized(nn.Module):

  def __init__(self, mean, std, persistent=False, channels=None):
    super().__init__()
    channels = channels or len(mean)
    mean = torch.tensor(mean, dtype=torch.float32).expand(channels)
    std = torch.tensor(std, dtype=torch.float32).expand(channels)
    self.register_buffer("mean", mean.reshape(-1, 1, 1).clone(),
                         persistent=persistent)
    self.register_buffer("std", std.reshape(-1, 1, 1).clone(),
                         persistent=persistent)

  def normalize(self, x):
    return (x - self.mean) / self.std


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_planes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != planes:
      self.shortcut = nn.Sequential(
          nn.Conv2d(in_planes, planes, 1, stride, bias=False),
          nn.BatchNorm2d(planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
  expansion = 1

  def __init__(self, in_planes, planes, stride=1, shortcut_from_input=False):
    super().__init__()
    self.shortcut_from_input = shortcut_from_input
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    if stride != 1 or in_planes != planes:
      self.shortcut = nn.Sequential(
          nn.Conv2d(in_planes, planes, 1, stride, bias=False))

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = x
    if hasattr(self, "shortcut"):
      shortcut = self.shortcut(x if self.shortcut_from_input else out)
    out = self.conv1(out)
    out = self.conv2(F.relu(self.bn2(out)))
    return out + shortcut


class ResNet(_Normalized):

  def __init__(self, block, num_blocks, num_classes=10, width=64,
               in_channels=3, mean=(0.0,), std=(1.0,), final_bn=True,
               shortcut_from_input=False):
    super().__init__(mean, std)
    self.preact = block is PreActBlock
    self.final_bn = final_bn
    self.block_kw = {"shortcut_from_input": True} if shortcut_from_input else {}
    self.in_planes = width
    self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
    if not self.preact:
      self.bn1 = nn.BatchNorm2d(width)
    for i, n in enumerate(num_blocks):
      setattr(self, f"layer{i + 1}",
              self._make_layer(block, width * 2**i, n, 1 if i == 0 else 2))
    if self.preact and final_bn:
      self.bn = nn.BatchNorm2d(width * 8)
    self.linear = nn.Linear(width * 8, num_classes)

  def _make_layer(self, block, planes, num_blocks, stride):
    layers = []
    for s in [stride] + [1] * (num_blocks - 1):
      layers.append(block(self.in_planes, planes, s, **self.block_kw))
      self.in_planes = planes
    return nn.Sequential(*layers)

  def forward(self, x):
    out = self.conv1(self.normalize(x))
    if not self.preact:
      out = F.relu(self.bn1(out))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    if self.preact and self.final_bn:
      out = F.relu(self.bn(out))
    out = F.adaptive_avg_pool2d(out, 1).flatten(1)
    return self.linear(out)


def ResNet18(**kw):
  return ResNet(BasicBlock, [2, 2, 2, 2], **kw)


def ResNet34(**kw):
  return ResNet(BasicBlock, [3, 4, 6, 3], **kw)


def PreActResNet18(**kw):
  return ResNet(PreActBlock, [2, 2, 2, 2], **kw)


def WongPreActResNet18(**kw):
  return ResNet(PreActBlock, [2, 2, 2, 2], final_bn=False,
                shortcut_from_input=True, **kw)


class WideBasicBlock(nn.Module):

  def __init__(self, in_planes, out_planes, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
    self.equal_in_out = in_planes == out_planes and stride == 1
    if not self.equal_in_out:
      self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0,
                                    bias=False)

  def forward(self, x):
    act = self.relu1(self.bn1(x))
    out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
    return (x if self.equal_in_out else self.convShortcut(act)) + out


class NetworkBlock(nn.Module):

  def __init__(self, nb_layers, in_planes, out_planes, stride):
    super().__init__()
    self.layer = nn.Sequential(*[
        WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                       stride if i == 0 else 1) for i in range(nb_layers)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(_Normalized):

  def __init__(self, depth=34, widen_factor=10, num_classes=10, width=16,
               in_channels=3, mean=(0.0,), std=(1.0,), sub_block1=False):
    super().__init__(mean, std)
    n = (depth - 4) // 6
    c = [width, width * widen_factor, 2 * width * widen_factor,
         4 * width * widen_factor]
    self.conv1 = nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False)
    self.block1 = NetworkBlock(n, c[0], c[1], 1)
    if sub_block1:  # TRADES' wideresnet.py builds it and never uses it
      self.sub_block1 = NetworkBlock(n, c[0], c[1], 1)
    self.block2 = NetworkBlock(n, c[1], c[2], 2)
    self.block3 = NetworkBlock(n, c[2], c[3], 2)
    self.bn1 = nn.BatchNorm2d(c[3])
    self.relu = nn.ReLU(inplace=True)
    self.fc = nn.Linear(c[3], num_classes)

  def forward(self, x):
    out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
    out = self.relu(self.bn1(out))
    return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def WRN34_10(**kw):
  return WideResNet(34, 10, **kw)


def _same_pad(x, stride):
  """Zero padding before a 3x3 convolution without its own padding."""
  if stride == 1:
    return F.pad(x, (1, 1, 1, 1))
  assert stride == 2, stride
  return F.pad(x, (0, 1, 0, 1))  # (left, right, top, bottom)


class DMBlock(nn.Module):

  def __init__(self, in_planes, out_planes, stride):
    super().__init__()
    self.stride = stride
    self.batchnorm_0 = nn.BatchNorm2d(in_planes)
    self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
    self.batchnorm_1 = nn.BatchNorm2d(out_planes)
    self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
    self.shortcut = None
    if in_planes != out_planes:
      self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

  def forward(self, x):
    pre = F.silu(self.batchnorm_0(x))
    out = self.conv_0(_same_pad(pre, self.stride))
    out = self.conv_1(F.silu(self.batchnorm_1(out)))
    return (x if self.shortcut is None else self.shortcut(pre)) + out


class DMGroup(nn.Module):

  def __init__(self, num_blocks, in_planes, out_planes, stride):
    super().__init__()
    self.block = nn.Sequential(*[
        DMBlock(in_planes if i == 0 else out_planes, out_planes,
                stride if i == 0 else 1) for i in range(num_blocks)])

  def forward(self, x):
    return self.block(x)


class DMWideResNet(_Normalized):

  def __init__(self, depth=28, widen_factor=10, num_classes=10, width=16,
               in_channels=3, mean=(0.0,), std=(1.0,), persistent_stats=False):
    super().__init__(mean, std, persistent_stats, in_channels)
    n = (depth - 4) // 6
    c = [width] + [width * widen_factor * 2**g for g in range(3)]
    self.init_conv = nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False)
    self.layer = nn.Sequential(*[DMGroup(n, c[g], c[g + 1], 1 if g == 0 else 2)
                                 for g in range(3)])
    self.batchnorm = nn.BatchNorm2d(c[3])
    self.logits = nn.Linear(c[3], num_classes)

  def forward(self, x):
    out = self.layer(self.init_conv(self.normalize(x)))
    out = F.silu(self.batchnorm(out))
    return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


class DMPreActBlock(nn.Module):

  def __init__(self, in_planes, out_planes, stride):
    super().__init__()
    self.stride = stride
    self.batchnorm_0 = nn.BatchNorm2d(in_planes)
    self.conv_2d_1 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
    self.batchnorm_1 = nn.BatchNorm2d(out_planes)
    self.conv_2d_2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
    if stride != 1 or in_planes != out_planes:
      self.shortcut = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)

  def forward(self, x):
    out = F.silu(self.batchnorm_0(x))
    shortcut = x
    if hasattr(self, "shortcut"):
      shortcut = self.shortcut(_same_pad(x, self.stride))
    out = self.conv_2d_1(_same_pad(out, self.stride))
    out = self.conv_2d_2(F.silu(self.batchnorm_1(out)))
    return out + shortcut


class DMPreActResNet(_Normalized):

  def __init__(self, num_blocks=(2, 2, 2, 2), num_classes=10, width=64,
               in_channels=3, mean=(0.0,), std=(1.0,), persistent_stats=False):
    super().__init__(mean, std, persistent_stats, in_channels)
    self.conv_2d = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
    planes = width
    for k, n in enumerate(num_blocks):
      blocks = []
      for i in range(n):
        blocks.append(DMPreActBlock(planes, width * 2**k,
                                    2 if (k > 0 and i == 0) else 1))
        planes = width * 2**k
      setattr(self, f"layer_{k}", nn.Sequential(*blocks))
    self.num_stages = len(num_blocks)
    self.batchnorm = nn.BatchNorm2d(planes)
    self.logits = nn.Linear(planes, num_classes)

  def forward(self, x):
    out = self.conv_2d(self.normalize(x))
    for k in range(self.num_stages):
      out = getattr(self, f"layer_{k}")(out)
    out = F.silu(self.batchnorm(out))
    return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


def build(name, **kw):
  """The reference for one of our `models.create_model` names."""
  if name.startswith(("wrn", "dm_wrn")):
    depth, k = (int(t) for t in name.split("wrn")[1].split("_"))
    cls = DMWideResNet if name.startswith("dm_") else WideResNet
    return cls(depth, k, **kw)
  if name.startswith("dm_preact_resnet"):
    return DMPreActResNet({"18": (2, 2, 2, 2), "34": (3, 4, 6, 3)}[name[-2:]],
                          **kw)
  return BUILDERS[name](**kw)


BUILDERS = {"resnet18": ResNet18, "resnet34": ResNet34,
            "preact_resnet18": PreActResNet18,
            "wong_preact_resnet18": WongPreActResNet18, "wrn34_10": WRN34_10}

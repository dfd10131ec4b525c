"""PyTorch reference models with the parameter names of the public code.

Written for the cross-checks (converted logits, attacks against torchattacks);
the structure and state_dict names follow the repositories our users'
checkpoints come from:
- `ResNet18` / `ResNet34`: post-activation BasicBlock with `shortcut.0` (1x1
  conv) and `shortcut.1` (BN), head `linear` (RiFT, kuangliu-style CIFAR code).
- `PreActResNet18`: pre-activation blocks, `shortcut.0` conv only, final `bn`,
  head `linear` (Bag-of-Tricks, CURE).
- `WideResNet` (34-10): `block1.layer.0.{bn1,conv1,bn2,conv2,convShortcut}`,
  final `bn1`, head `fc` (TRADES / RobustBench). TRADES' unused `sub_block1`
  is optional (`sub_block1=True`) so its checkpoints can be mimicked.

Differences from those files, all irrelevant to the weights: a global average
pool instead of `avg_pool2d(out, 4 or 8)` (same for 32x32 inputs, and also
defined for 28x28), configurable widths and input channels, and optional
per-channel normalisation inside (`mean`/`std` non-persistent buffers, so they
are not in the state_dict), as our models normalise inside.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Normalized(nn.Module):

  def __init__(self, mean, std):
    super().__init__()
    mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    self.register_buffer("mean", mean, persistent=False)
    self.register_buffer("std", std, persistent=False)

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

  def __init__(self, in_planes, planes, stride=1):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    if stride != 1 or in_planes != planes:
      self.shortcut = nn.Sequential(
          nn.Conv2d(in_planes, planes, 1, stride, bias=False))

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
    out = self.conv1(out)
    out = self.conv2(F.relu(self.bn2(out)))
    return out + shortcut


class ResNet(_Normalized):

  def __init__(self, block, num_blocks, num_classes=10, width=64,
               in_channels=3, mean=(0.0,), std=(1.0,)):
    super().__init__(mean, std)
    self.preact = block is PreActBlock
    self.in_planes = width
    self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
    if not self.preact:
      self.bn1 = nn.BatchNorm2d(width)
    for i, n in enumerate(num_blocks):
      setattr(self, f"layer{i + 1}",
              self._make_layer(block, width * 2**i, n, 1 if i == 0 else 2))
    if self.preact:
      self.bn = nn.BatchNorm2d(width * 8)
    self.linear = nn.Linear(width * 8, num_classes)

  def _make_layer(self, block, planes, num_blocks, stride):
    layers = []
    for s in [stride] + [1] * (num_blocks - 1):
      layers.append(block(self.in_planes, planes, s))
      self.in_planes = planes
    return nn.Sequential(*layers)

  def forward(self, x):
    out = self.conv1(self.normalize(x))
    if not self.preact:
      out = F.relu(self.bn1(out))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    if self.preact:
      out = F.relu(self.bn(out))
    out = F.adaptive_avg_pool2d(out, 1).flatten(1)
    return self.linear(out)


def ResNet18(**kw):
  return ResNet(BasicBlock, [2, 2, 2, 2], **kw)


def ResNet34(**kw):
  return ResNet(BasicBlock, [3, 4, 6, 3], **kw)


def PreActResNet18(**kw):
  return ResNet(PreActBlock, [2, 2, 2, 2], **kw)


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


BUILDERS = {"resnet18": ResNet18, "resnet34": ResNet34,
            "preact_resnet18": PreActResNet18, "wrn34_10": WRN34_10}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random BN affine parameters and running statistics (so a conversion that
  drops or swaps them shows up in the logits)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        m.num_batches_tracked.fill_(7)
  return model

"""A PyTorch model to hand to RiFT: PGD-AT on Fashion-MNIST, plain PyTorch.

  python scripts/torch_pgd_at.py --out runs/torch_model/model.pth

Trains `rift_jax.models.torch_models.ResNet18` (the RiFT / kuangliu CIFAR ResNet-18
layout, width 8, one input channel, normalisation inside with Fashion-MNIST's
mean/std) with L∞ PGD-5 adversarial training (ε = 0.1, step 0.03, random
start, BN in train mode while crafting) on the first --train images of the
Debian Fashion-MNIST files, without data augmentation, and saves it the way
much research code does: a DataParallel-style `{'state_dict': {'module.…'},
'epoch': …}` file. It stands for "the robust PyTorch model you already have"
in README's "RiFT your own PyTorch model"; nothing in it depends on JAX.
"""
import argparse
import gzip
import os
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F

from rift_jax.data.datasets import DEBIAN_FASHION_MNIST
from rift_jax.models.torch_models import ResNet18

MEAN, STD = (0.2860,), (0.3530,)


def read_idx(path):
  with gzip.open(path, "rb") as f:
    raw = f.read()
  ndim = raw[3]
  dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def pgd(model, x, y, eps, step, steps):
  delta = torch.empty_like(x).uniform_(-eps, eps)
  delta = (x + delta).clamp(0, 1) - x
  for _ in range(steps):
    delta.requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y)
    g, = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + step * g.sign()).clamp(-eps, eps)
    delta = (x + delta).clamp(0, 1) - x
  return (x + delta).detach()


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--data", default=DEBIAN_FASHION_MNIST)
  p.add_argument("--train", type=int, default=10000)
  p.add_argument("--epochs", type=int, default=4)
  p.add_argument("--width", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  torch.manual_seed(a.seed)
  x = read_idx(os.path.join(a.data, "train-images-idx3-ubyte.gz"))[:a.train]
  y = read_idx(os.path.join(a.data, "train-labels-idx1-ubyte.gz"))[:a.train]
  x = torch.from_numpy(x[:, None].astype(np.float32) / 255.0)
  y = torch.from_numpy(y.astype(np.int64))
  model = ResNet18(num_classes=10, width=a.width, in_channels=1, mean=MEAN,
                   std=STD)
  opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                        weight_decay=5e-4)
  sched = torch.optim.lr_scheduler.MultiStepLR(
      opt, [int(0.75 * a.epochs * (a.train // 128))], 0.1)
  for epoch in range(1, a.epochs + 1):
    t0, perm, correct = time.time(), torch.randperm(a.train), 0
    model.train()
    for i in range(a.train // 128):
      idx = perm[i * 128:(i + 1) * 128]
      xa = pgd(model, x[idx], y[idx], 0.1, 0.03, 5)
      out = model(xa)
      loss = F.cross_entropy(out, y[idx])
      opt.zero_grad()
      loss.backward()
      opt.step()
      sched.step()
      correct += (out.argmax(1) == y[idx]).sum().item()
    print(f"epoch {epoch}: adversarial train acc "
          f"{100 * correct / (a.train // 128 * 128):.1f}% ({time.time() - t0:.0f} s)")
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()},
              "epoch": a.epochs}, a.out)
  print(f"saved {a.out}")


if __name__ == "__main__":
  main()

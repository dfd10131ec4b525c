"""Quickstart: PGD adversarial training on Fashion-MNIST in a few CPU minutes.

  python -m launch.train --config=configs/quickstart.py --workdir=runs/quickstart

Data: Fashion-MNIST from Debian's `dataset-fashion-mnist` (offline), 5,000
validation images carved from train, a 12,000-image training subset.
Threat model: L-inf ε = 0.1 (≈ 25/255), PGD-5 with step 0.03 for training.
Fashion-MNIST images are mostly flat background and strong edges: at ε = 8/255
a small net is robust almost everywhere it is accurate (robust ≈ clean), so
there is nothing for RiFT to trade; ε = 0.1 is the value usual for
(Fashion-)MNIST-scale images where PGD drops accuracy well below clean but far
above zero, which is where RiFT's clean-vs-robust trade is visible.
Model: ResNet-18 (CIFAR stem) at width 8 — the paper's module structure
(`layer2.1.conv2`, shortcuts, `linear`) at a size the CPU trains in minutes.
"""
from configs import common


def get_config():
  c = common.base_config()
  c.data.name = "fashion_mnist"
  c.data.source = "debian"
  c.data.val_size = 5000
  c.data.train_size = 12000
  c.data.test_size = 0
  c.model.name = "resnet18"
  c.model.width = 8
  c.optim.lr = 0.05
  c.optim.batch_size = 128
  c.optim.epochs = 6
  c.optim.lr_decay_epochs = (4, 5)
  c.attack = common.pgd(0.1, 0.03, 5, bn_mode="train")
  c.eval.batch_size = 500
  c.eval.attack = common.pgd(0.1, 0.025, 10)
  # RiFT on top (launch/rift.py): the fixed MRC set and the final test attack
  # use the same threat model; OOD = the Fashion-MNIST test subset corrupted
  # with the 18 types of the official RiFT code (all but glass_blur, which
  # costs ~2 s an image here), 5 severities, 300 images per cell.
  c.data.test_size = 2000
  c.rift.mrc.num_examples = 1000
  c.rift.mrc.batch_size = 500
  c.rift.mrc.attack = common.pgd(0.1, 0.025, 10)
  c.rift.test_attack = common.pgd(0.1, 0.025, 10, restarts=3)
  c.rift.finetune.optim.epochs = 6
  c.rift.finetune.optim.lr_decay_epochs = (3,)
  c.rift.ood.enabled = True
  c.rift.ood.corruptions = "rift_code"
  c.rift.ood.max_images = 300
  return c.lock()

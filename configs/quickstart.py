"""Quickstart: RiFT on Fashion-MNIST in a few CPU minutes (what `make demo` runs).

  python -m launch.rift --config=configs/quickstart.py --workdir=runs/demo
  python -m launch.train --config=configs/quickstart.py --workdir=runs/quickstart

Data: Fashion-MNIST from Debian's `dataset-fashion-mnist` (offline), 1,000
validation images carved from train, a 10,000-image training subset, a
1,000-image test subset (sizes chosen so `make demo` fits in 15 minutes on
2 CPU cores, installs included).
Threat model: L-inf ε = 0.1 (≈ 25/255), PGD-5 with step 0.03 for training,
PGD-10 with step 0.025 for evaluation. ε = 0.1 is the usual budget for
(Fashion-)MNIST-scale grey images (8/255 is a CIFAR value); at 0.1 the trained
net's PGD accuracy sits well below its clean accuracy and far above zero (the
demo's numbers are in README.md), which is the regime where RiFT's
clean-vs-robust trade can show.
Model: ResNet-18 (CIFAR stem) at width 8 — the paper's module structure
(`layer2.1.conv2`, shortcuts, `linear`) at a size the CPU trains in minutes.

Variant `smoke` (`--config=configs/quickstart.py:smoke`): the same data
source, model family and stages (θ_AT training, fixed set, MRC, fine-tuning,
α sweep, OOD generation, test, report, export) at a size that runs in a few
CPU minutes, most of them compilation. CI runs it through `make demo` on the
base install alone, so a package the demo needs but only the test extras
install fails CI; its numbers mean nothing.
"""
from configs import common


VARIANTS = ("", "smoke")


def get_config(arg: str = ""):
  if arg not in VARIANTS:
    raise ValueError(f"variant {arg!r} is not allowed; use configs/quickstart.py "
                     "or configs/quickstart.py:smoke")
  c = common.base_config()
  c.data.name = "fashion_mnist"
  c.data.source = "debian"
  c.data.val_size = 1000
  c.data.train_size = 10000
  c.data.test_size = 1000
  c.model.name = "resnet18"
  c.model.width = 8
  c.optim.lr = 0.05
  c.optim.batch_size = 128
  c.optim.epochs = 5
  c.optim.lr_decay_epochs = (4,)
  # BN running averages follow the loss pass only ('loss'): the authors'
  # extra statistics passes ('authors', configs/methods_paper.py) cost ~25 %
  # more per PGD-AT step on this CPU.
  c.attack = common.pgd(0.1, 0.03, 5, bn_mode="train", bn_passes="loss")
  c.eval.batch_size = 500
  c.eval.attack = common.pgd(0.1, 0.025, 10)
  # RiFT on top (launch/rift.py): the fixed MRC set and the final test attack
  # use the same threat model; OOD = the first 200 test images corrupted with
  # all 19 types of imagecorruptions (the 15 standard + 4 extra), 5
  # severities. MRC: 500 fixed examples in batches of 25, 10 passes: the
  # official 200 ascent steps a module (20 a pass).
  c.rift.mrc.num_examples = 500
  c.rift.mrc.batch_size = 25
  c.rift.mrc.num_passes = 10
  c.rift.mrc.attack = common.pgd(0.1, 0.025, 10)
  c.rift.test_attack = common.pgd(0.1, 0.025, 10, restarts=3)
  c.rift.finetune.optim.epochs = 6
  c.rift.finetune.optim.lr_decay_epochs = (3,)
  c.rift.ood.enabled = True
  c.rift.ood.corruptions = "all"
  c.rift.ood.max_images = 200
  if arg == "smoke":
    _shrink_to_smoke(c)
  return c.lock()


def _shrink_to_smoke(c) -> None:
  c.data.val_size, c.data.train_size, c.data.test_size = 256, 512, 128
  c.model.width = 4
  c.optim.epochs = 1
  c.optim.lr_decay_epochs = ()
  c.attack.num_steps = 2
  c.eval.batch_size = 128
  c.eval.attack.num_steps = 3
  c.rift.mrc.num_examples = 64
  c.rift.mrc.batch_size = 32
  c.rift.mrc.num_passes = 2
  c.rift.mrc.attack.num_steps = 3
  c.rift.test_attack.num_steps = 3
  c.rift.test_attack.restarts = 1
  c.rift.finetune.optim.epochs = 1
  c.rift.finetune.optim.lr_decay_epochs = ()
  c.rift.alphas = (0.0, 0.5, 1.0)
  c.rift.ood.max_images = 8
  c.rift.ood.corruptions = "gaussian_noise,motion_blur"
  c.rift.ood.severities = (1,)

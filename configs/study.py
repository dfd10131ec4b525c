"""The offline RiFT benchmark: Fashion-MNIST in full, sized to have power.

  python -m launch.study --config=configs/study.py --workdir=runs/study --seeds=0,1,2

Data: all 60,000 Fashion-MNIST training images (Debian package, offline),
5,000 carved off for validation and every selection (best AT epoch, MRC's
fixed set, best fine-tuning epoch, lr, α); the whole 10,000-image test split
for clean and PGD-10 × 3 restarts; OOD on the first 2,000 test images × the
15 standard corruptions × 5 severities (generated once, the same images for
every seed).
Threat model: L∞ ε = 0.1, PGD-5 (step 0.03) for training, PGD-10 (step
0.025) for validation and test (configs/quickstart.py).
θ_AT: ResNet-18 (CIFAR stem) at width 8, PGD-AT until the validation robust
accuracy has stopped rising (the curve is in study.md / study.png).
MRC: 1,000 fixed validation examples, the official 10 passes (batches of
500: two full batches instead of 512 + a padded one).
Fine-tuning: the paper's recipe (SGD 0.9, wd 5e-4, batch 128, 10 epochs,
×0.1 after 5) with the lr chosen on validation from a small sweep.
Investigations (`study.variants`, on `study.variant_seeds`, each reusing
that seed's θ_AT, fixed set and MRC): conv3x3 (the lowest-MRC 3×3
convolution instead of a 1×1 shortcut or the stem), frozen_bn
(update_batch_stats off). The α curve at a 10× larger fine-tuning lr comes
with every seed (the lr sweep's second entry).
"""
from configs import common, quickstart

import ml_collections


def get_config():
  c = quickstart.get_config()
  c.unlock()
  c.data.val_size, c.data.train_size, c.data.test_size = 5000, 0, 0
  c.model.width = 8
  c.optim.epochs = 5
  c.optim.lr = 0.05
  c.optim.lr_decay_epochs = (4,)
  c.eval.batch_size = 500
  c.rift.mrc.num_examples = 1000
  c.rift.mrc.num_passes = 10
  c.rift.mrc.batch_size = 500
  c.rift.finetune.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, momentum=0.9, weight_decay=5e-4, nesterov=False, batch_size=128,
      epochs=10, schedule="piecewise", lr_decay_epochs=(5,), lr_decay_factor=0.1))
  # The paper's lr and 10× it: the sweep also gives every seed the α curve
  # at a 10× larger fine-tuning lr (one of the investigations).
  c.rift.finetune.lr_sweep = (1e-3, 1e-2)
  c.rift.test_attack = common.pgd(0.1, 0.025, 10, restarts=3)
  c.rift.ood = common.ood(enabled=True, corruptions="standard", max_images=2000)
  c.study = ml_collections.ConfigDict(dict(
      variants=("conv3x3", "frozen_bn"), variant_seeds=(0,)))
  return c.lock()

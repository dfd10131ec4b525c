"""The offline RiFT study: Fashion-MNIST in full, sized to have power, RiFT
as its authors ran it, three seeds, and what explains the result.

  python -m launch.study --config=configs/study.py --workdir=runs/study --seeds=0,1,2
  # re-build study.md / README's tables from the committed seeds only:
  python -m launch.study --config=configs/study.py --workdir=runs/study --aggregate_only

Data: all 60,000 Fashion-MNIST training images (Debian package, offline),
5,000 carved off for validation and every selection (best AT epoch, MRC's
fixed set, best fine-tuning epoch, lr, α); the whole 10,000-image test split
for clean and PGD-10 × 3 restarts; OOD on the first 2,000 test images × the
15 standard corruptions × 5 severities (generated once, the same images for
every seed); OOD along the α curve on 300 validation images × 15
corruptions at severity 3.
Threat model: L∞ ε = 0.1, PGD-5 (step 0.03) for training, PGD-10 (step
0.025) for validation and test (configs/quickstart.py).
θ_AT: ResNet-18 (CIFAR stem) at width 8, PGD-AT, 5 epochs (the curve is in
study.md / study.png).
RiFT as the authors ran it: MRC on 1,000 fixed validation examples in
batches of 50 over the official 10 passes — the official 200 ascent steps a
module; the fine-tuned module is the lowest-MRC 3×3 block convolution (every
module the authors published is one); fine-tuning with the paper's recipe
(SGD 0.9, wd 5e-4, batch 128, 10 epochs, ×0.1 after 5, lr 1e-3); α by the
paper's rule on validation.
Diagnostics on every seed: the BatchNorm swap (rift.bn_swap), OOD per
corruption family, OOD along the α curve (rift.ood_val).
Variants (`study.variants`: {name: seeds}; rift_jax/experiments/study.py): all_modules
(lowest MRC over every module: the ablation) and frozen_bn on every seed;
lr0 (statistics only), lr_sweep (the paper's lr rule) and alpha_ood (α that
keeps corrupted-validation accuracy) on seed 0; the MRC ranking's stability
(`study.stability_seeds`) on seed 0.
Finished seeds are copied to `study.results_dir` (committed) and the tables
are built from there. Seeds may run in separate calls (`--seeds=2` after
0 and 1 finished): each call runs only the variants of its own seeds, and a
re-run seed replaces its kept runs file by file as they finish.
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
  c.rift.mrc.batch_size = 50
  c.rift.finetune.candidates = "conv3x3"
  c.rift.finetune.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, momentum=0.9, weight_decay=5e-4, nesterov=False, batch_size=128,
      epochs=10, schedule="piecewise", lr_decay_epochs=(5,), lr_decay_factor=0.1))
  c.rift.finetune.lr_sweep = ()     # the paper's lr; the sweep is a variant
  c.rift.test_attack = common.pgd(0.1, 0.025, 10, restarts=3)
  c.rift.ood = common.ood(enabled=True, corruptions="standard", max_images=2000)
  c.rift.ood_val = common.ood(enabled=True, corruptions="standard",
                              severities=(3,), max_images=300)
  c.rift.bn_swap = True
  c.study = ml_collections.ConfigDict(dict(
      variants=ml_collections.ConfigDict(dict(
          all_modules=(0, 1, 2), frozen_bn=(0, 1, 2), lr0=(0,), lr_sweep=(0,),
          alpha_ood=(0,))),
      stability_seeds=(0,),
      results_dir="results/fmnist_study"))
  return c.lock()

"""The base config every experiment starts from (ml_collections, locked).

Fields are grouped as the code is: data, model, method (+ its own block),
optim, attack (training), eval, rift. Config files override what differs and
return `config.lock()`ed ConfigDicts, so a misspelt override
(`--config.optim.lrr=...`) is an error, not a silent no-op.
"""
import ml_collections


def pgd(epsilon, step_size, num_steps, restarts=1, **kw):
  c = ml_collections.ConfigDict(dict(
      epsilon=epsilon, step_size=step_size, num_steps=num_steps, norm="linf",
      loss="ce", init="uniform", init_std=0.001, restarts=restarts,
      unroll="auto"))
  c.update(kw)
  return c


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      name="cifar10", source="tfds", data_dir="~/tensorflow_datasets",
      debian_dir="/usr/share/datasets/fashion-mnist", val_size=1000,
      train_size=0, test_size=0, split_seed=0))
  c.model = ml_collections.ConfigDict(dict(name="resnet18", width=64))
  # natural | pgd_at (| trades | mart | ... as registered in rift_jax.objectives)
  c.method = "pgd_at"
  c.augment = True
  c.log_every = 10
  # Paper recipe (ALGORITHMS.md §2, Bag-of-Tricks): SGD 0.9, wd 5e-4, lr 0.1,
  # batch 128, 110 epochs, lr x0.1 at epochs 100 and 105.
  c.optim = ml_collections.ConfigDict(dict(
      lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False, batch_size=128,
      epochs=110, schedule="piecewise", lr_decay_epochs=(100, 105),
      lr_decay_factor=0.1))
  # Training attack: L-inf PGD-10, eps 8/255, step 2/255, BN in train mode.
  c.attack = pgd(8 / 255, 2 / 255, 10, bn_mode="train")
  # Model selection on validation: PGD-10 (one restart) each epoch.
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=256, attack=pgd(8 / 255, 2 / 255, 10)))
  return c

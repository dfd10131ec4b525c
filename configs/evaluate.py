"""Robustness evaluation of a checkpoint (launch/evaluate.py).

  python -m launch.evaluate --config=configs/evaluate.py:quickstart \
      --checkpoint=runs/demo/at --workdir=runs/demo/eval

`:quickstart` names the training config under configs/ whose data and model
the checkpoint belongs to (default: quickstart); this file adds the
`evaluate` block. The threat model defaults to that config's `eval.attack`
(ε, norm, PGD step); the attacks follow the paper protocol made stricter
(ALGORITHMS.md §5): PGD-10 with 3 restarts (an example is robust only if it
survives all), then AutoAttack's standard APGD-CE -> APGD-T (100 steps,
9 target classes) on the survivors.

Suite entries (comma list): clean, pgd, pgd_cw (PGD on the CW margin),
apgd_ce, apgd_dlr, apgd_t, autoattack (APGD-CE then APGD-T), ood.
OOD sources: generate (imagecorruptions on the test split, cached),
cifar10_c (TFDS cifar10_corrupted in data.data_dir), cifar100_c (folder of
<corruption>.npy + labels.npy), tiny_imagenet_c (<root>/<name>/<sev>/<wnid>/).
"""
import importlib

import ml_collections


def get_config(arg: str = "quickstart"):
  base = importlib.import_module(f"configs.{arg}").get_config()
  c = ml_collections.ConfigDict(base.to_dict())  # an unlocked copy
  a = c.eval.attack
  c.evaluate = ml_collections.ConfigDict(dict(
      suite="clean,pgd,autoattack,ood",
      split="test",          # test | val
      num_examples=0,        # 0 = the whole split; else its first N images
      batch_size=int(c.eval.batch_size),
      seed=0,
      epsilon=float(a.epsilon), norm=str(a.norm),
      pgd=ml_collections.ConfigDict(dict(
          num_steps=10, step_size=float(a.step_size), restarts=3)),
      apgd=ml_collections.ConfigDict(dict(
          num_steps=100, restarts=1, num_target_classes=9, unroll="auto")),
      ood=ml_collections.ConfigDict(dict(
          source="generate", root="", corruptions="standard",
          severities=(1, 2, 3, 4, 5), max_images=1000, cache_dir="")),
      # --torch_checkpoint: True = the PyTorch model expects inputs
      # normalised with the data set's mean/std (our model does it inside);
      # False = it takes [0, 1] inputs (RobustBench).
      torch_normalized_inputs=True))
  return c.lock()

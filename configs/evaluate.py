"""Robustness evaluation of a checkpoint (launch/evaluate.py).

  python -m launch.evaluate --config=configs/evaluate.py:quickstart \
      --checkpoint=runs/demo/at --workdir=runs/demo/eval

`:quickstart` names the training config under configs/ whose data and model
the checkpoint belongs to (default: quickstart); this file adds the
`evaluate` block. The threat model defaults to that config's `eval.attack`
(ε, norm, PGD step); the attacks follow the paper protocol made stricter
(docs/algorithms.md): PGD-10 with 3 restarts (an example is robust only if it
survives all), then AutoAttack's standard version (APGD-CE -> APGD-T ->
FAB-T -> Square: 100 steps, 9 target classes, 5,000 queries) on the
survivors.

Suite entries (comma list): clean, pgd, pgd_cw (PGD on the CW margin),
apgd_ce, apgd_dlr, apgd_t, fab, fab_t, square, autoattack (the standard
version by default: APGD-CE → APGD-T → FAB-T → Square;
--config.evaluate.autoattack.version=plus|rand), ood.
How a PyTorch checkpoint expects its inputs is `model.input_normalization`
('dataset' or 'none' for RobustBench models).
OOD sources: generated (imagecorruptions on the test split, cached),
cifar10_c (TFDS cifar10_corrupted in data.data_dir), cifar100_c (folder of
<corruption>.npy + labels.npy), tiny_imagenet_c (<root>/<name>/<sev>/<wnid>/).
"""
import importlib

import ml_collections

from configs import common


def get_config(arg: str = "quickstart"):
  base = importlib.import_module(f"configs.{arg}").get_config()
  c = ml_collections.ConfigDict(base.to_dict())  # an unlocked copy
  a = c.eval.attack
  c.evaluate = ml_collections.ConfigDict(dict(
      suite="clean,pgd,autoattack,ood",
      split="test",          # test | val
      num_examples=0,        # 0 = the whole split; else its first N images
      batch_size=int(c.eval.batch_size),
      # XLA:CPU devices to split the host into (1: one; 2 on a 2-core machine:
      # one per core, batches sharded, the same numbers; GPU/TPU ignore it).
      cpu_devices=1,
      seed=0,
      epsilon=float(a.epsilon), norm=str(a.norm),
      pgd=ml_collections.ConfigDict(dict(
          num_steps=10, step_size=float(a.step_size), restarts=3)),
      apgd=ml_collections.ConfigDict(dict(
          num_steps=100, restarts=1, num_target_classes=9, unroll="auto",
          # APGD steps per compiled program ('auto': 10 on CPU, where the
          # loop is unrolled; all in one rolled program on GPU/TPU).
          steps_per_call="auto")),
      # AutoAttack (and the fab / fab_t / square entries): the version, a
      # subset of its attacks ('' = all, e.g. 'apgd_ce,apgd_t,fab_t,square'),
      # APGD/FAB iterations, target classes, Square queries, EOT calls (rand).
      autoattack=ml_collections.ConfigDict(dict(
          version="standard", attacks="", num_steps=100, num_target_classes=9,
          square_queries=5000, eot_iter=20)),
      ood=common.ood(enabled=True, corruptions="standard", max_images=1000)))
  return c.lock()

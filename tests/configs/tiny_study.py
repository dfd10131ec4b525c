"""A study small enough for tests (synthetic data, tiny CNN, 2 seeds).

  python -m launch.study --config=tests/configs/tiny_study.py --workdir=/tmp/s --seeds=0,1
"""
import ml_collections

from configs import common
from tests.configs import tiny


def get_config():
  c = tiny.get_config()
  c.unlock()
  c.study = ml_collections.ConfigDict(dict(
      variants=ml_collections.ConfigDict(dict(frozen_bn=(0,))),
      stability_seeds=(), results_dir=""))
  c.rift.ood = common.ood(enabled=True, corruptions="gaussian_noise,contrast",
                          max_images=16, severities=(1, 5))
  c.rift.ood_val = common.ood(enabled=True, corruptions="gaussian_noise,contrast",
                              max_images=8, severities=(3,))
  return c.lock()

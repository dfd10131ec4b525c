"""A config small enough for end-to-end tests (synthetic data, tiny CNN):
the demo's smoke variant (configs/quickstart.py:smoke) on synthetic data.

  python -m launch.rift --config=tests/configs/tiny.py --workdir=/tmp/tiny
"""
from configs import quickstart


def get_config():
  c = quickstart.get_config("smoke")
  c.unlock()
  c.data.name = "synthetic"
  c.data.val_size, c.data.train_size, c.data.test_size = 128, 0, 0
  c.model.name = "small_cnn"
  c.optim.epochs = 2
  c.optim.batch_size = 64
  c.optim.lr_decay_epochs = (1,)
  c.eval.batch_size = 64
  c.rift.test_attack.restarts = 2
  c.rift.finetune.optim.epochs = 2
  c.rift.finetune.optim.batch_size = 64
  c.rift.ood.max_images = 16
  c.rift.ood.corruptions = "gaussian_noise,contrast"
  c.rift.ood.severities = (1, 5)
  return c.lock()

"""A config small enough for end-to-end tests (synthetic data, tiny CNN).

  python -m launch.rift --config=tests/configs/tiny.py --workdir=/tmp/tiny
"""
from configs import quickstart


def get_config():
  c = quickstart.get_config()
  c.unlock()
  c.data.name = "synthetic"
  c.data.val_size = 128
  c.data.train_size = 0
  c.data.test_size = 0
  c.model.name = "small_cnn"
  c.model.width = 4
  c.optim.epochs = 2
  c.optim.batch_size = 64
  c.optim.lr_decay_epochs = (1,)
  c.attack.num_steps = 2
  c.eval.batch_size = 64
  c.eval.attack.num_steps = 3
  c.rift.mrc.num_examples = 64
  c.rift.mrc.batch_size = 32
  c.rift.mrc.num_passes = 2
  c.rift.mrc.attack.num_steps = 3
  c.rift.test_attack.num_steps = 3
  c.rift.test_attack.restarts = 2
  c.rift.finetune.optim.epochs = 2
  c.rift.finetune.optim.batch_size = 64
  c.rift.alphas = (0.0, 0.5, 1.0)
  c.rift.ood.max_images = 16
  c.rift.ood.corruptions = "gaussian_noise,contrast"
  c.rift.ood.severities = (1, 5)
  return c.lock()

"""AFT — adversarial fine-tuning with a 'slow start, fast decay' schedule.

Jeddi, Shafiee & Wong (2020): train on clean images first, then fine-tune
with PGD-AT for a few epochs, the learning rate rising slowly to its peak
and then decaying fast. The method is `config.method='aft'` (PGD-AT that
must start from `config.init_from`, a natural run); the schedule is
`config.optim.schedule='slow_start_fast_decay'`, registered in
`train.EXTRA_SCHEDULES`, and reads from `config.optim`:

  lr               peak learning rate
  warmup_epochs    length of the linear rise (may be fractional)
  start_lr_factor  lr at step 0 = start_lr_factor·lr
  decay_shape      'linear' | 'cosine' | 'exponential' for the fall
  end_lr_factor    lr at the last step = end_lr_factor·lr

    lr(t) = lr·(s + (1 − s)·t/W)                          for t < W
    lr(t) = lr·shape((t − W)/(T − W)) from 1 down to e    for W ≤ t ≤ T

with W = warmup_epochs·steps_per_epoch, T = epochs·steps_per_epoch,
s = start_lr_factor, e = end_lr_factor; 'linear' falls as 1 − (1 − e)·u,
'cosine' as e + (1 − e)·(1 + cos πu)/2, 'exponential' as e^u (e > 0).

The paper's exact numbers are not in the material we have. The quickstart
defaults (`configs/quickstart_methods.py:aft`: peak 0.05, no warm-up, cosine
fall to 0) were chosen by a measurement on the quickstart data that is
written down in that config: on a 46-step fine-tune a 40% warm-up cost ~6 pp
of validation PGD accuracy, and the fast decay helped clean accuracy.
"""
from __future__ import annotations

import optax

from rift_jax import train
from rift_jax.errors import UserError, check_choice, check_range

DECAY_SHAPES = ("linear", "cosine", "exponential")
SCHEDULE = "slow_start_fast_decay"


def slow_start_fast_decay(optim, steps_per_epoch: int) -> optax.Schedule:
  """The AFT schedule from `optim` (see the module docstring)."""
  peak = float(optim.lr)
  epochs = int(optim.epochs)
  warmup = float(optim.get("warmup_epochs", 0.0))
  start = float(optim.get("start_lr_factor", 0.0))
  end = float(optim.get("end_lr_factor", 0.0))
  shape = optim.get("decay_shape", "linear")
  check_range("optim.warmup_epochs", warmup, 0.0, float(epochs), high_open=True)
  check_range("optim.start_lr_factor", start, 0.0, 1.0)
  check_range("optim.end_lr_factor", end, 0.0, 1.0)
  check_choice("optim.decay_shape", shape, DECAY_SHAPES)
  if shape == "exponential" and end <= 0.0:
    raise UserError("optim.end_lr_factor=0.0 is not allowed with "
                    "decay_shape='exponential'; use a value in (0, 1]")
  w = int(round(warmup * steps_per_epoch))
  decay_steps = max(epochs * steps_per_epoch - w, 1)
  if shape == "linear":
    fall = optax.linear_schedule(peak, end * peak, decay_steps)
  elif shape == "cosine":
    fall = optax.cosine_decay_schedule(peak, decay_steps, alpha=end)
  else:
    fall = optax.exponential_decay(peak, decay_steps, end, end_value=end * peak)
  if w == 0:
    return fall
  rise = optax.linear_schedule(start * peak, peak, w)
  return optax.join_schedules([rise, fall], [w])


train.EXTRA_SCHEDULES[SCHEDULE] = slow_start_fast_decay

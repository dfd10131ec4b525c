"""Learning-rate schedules, per optimiser step, from the optimiser settings
(`rift_jax.training.optim.Optim`). `optim.schedule` is one of:

- 'piecewise' (the paper recipe): `lr`, multiplied by `lr_decay_factor` at
  each epoch of `lr_decay_epochs` (e.g. 110 epochs, ×0.1 at 100 and 105);
- 'cosine': `lr` falling to 0 over all steps;
- 'constant': `lr`;
- 'slow_start_fast_decay': AFT's schedule (Jeddi, Shafiee & Wong 2020,
  "A simple fine-tuning is all you need: towards robust deep learning via
  adversarial fine-tuning"): adversarial fine-tuning of a naturally trained
  model for a few epochs, the learning rate rising slowly to its peak and
  then decaying fast. It reads

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
  The paper gives the shape, not the numbers: the defaults are our choice,
  measured on the quickstart data (`configs/quickstart_methods.py`: on a
  46-step fine-tune a 40 % warm-up cost ~6 pp of validation PGD accuracy and
  the fast decay helped clean accuracy; see docs/algorithms.md).
"""
from __future__ import annotations

import optax


def make_schedule(optim, steps_per_epoch: int) -> optax.Schedule:
  """Learning rate per step (epoch-based boundaries) of `optim`
  (`rift_jax.training.optim.Optim`)."""
  total = optim.epochs * steps_per_epoch
  if optim.schedule == "piecewise":
    bounds = {e * steps_per_epoch: optim.lr_decay_factor
              for e in optim.lr_decay_epochs if 0 < e < optim.epochs}
    return optax.piecewise_constant_schedule(optim.lr, bounds)
  if optim.schedule == "cosine":
    return optax.cosine_decay_schedule(optim.lr, max(total, 1))
  if optim.schedule == "constant":
    return optax.constant_schedule(optim.lr)
  return slow_start_fast_decay(optim, steps_per_epoch)


def slow_start_fast_decay(optim, steps_per_epoch: int) -> optax.Schedule:
  """AFT's schedule (see the module docstring)."""
  peak, end = optim.lr, optim.end_lr_factor
  w = int(round(optim.warmup_epochs * steps_per_epoch))
  decay_steps = max(optim.epochs * steps_per_epoch - w, 1)
  if optim.decay_shape == "linear":
    fall = optax.linear_schedule(peak, end * peak, decay_steps)
  elif optim.decay_shape == "cosine":
    fall = optax.cosine_decay_schedule(peak, decay_steps, alpha=end)
  else:
    fall = optax.exponential_decay(peak, decay_steps, end, end_value=end * peak)
  if w == 0:
    return fall
  rise = optax.linear_schedule(optim.start_lr_factor * peak, peak, w)
  return optax.join_schedules([rise, fall], [w])

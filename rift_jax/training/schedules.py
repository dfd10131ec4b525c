"""Learning-rate schedules, per optimiser step, from `config.optim`.

`optim.schedule` is one of:

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

from rift_jax.errors import UserError, check_choice, check_range

SCHEDULES = ("piecewise", "cosine", "constant", "slow_start_fast_decay")
DECAY_SHAPES = ("linear", "cosine", "exponential")


def validate(optim, prefix: str = "optim") -> None:
  """Checks every schedule field of `optim` (no steps needed)."""
  name = optim.get("schedule", "piecewise")
  check_choice(f"{prefix}.schedule", name, SCHEDULES)
  epochs = int(optim.epochs)
  check_range(f"{prefix}.epochs", epochs, 1)
  # lr > 0 is the optimiser's check (train.check_optim), which lets RiFT's
  # statistics-only fine-tuning diagnostic run at lr 0.
  check_range(f"{prefix}.lr", float(optim.lr), 0.0)
  if name == "piecewise":
    check_range(f"{prefix}.lr_decay_factor", float(optim.lr_decay_factor), 0.0)
    for e in optim.lr_decay_epochs:
      check_range(f"{prefix}.lr_decay_epochs entry", int(e), 0)
  if name == "slow_start_fast_decay":
    check_range(f"{prefix}.warmup_epochs", float(optim.get("warmup_epochs", 0.0)),
                0.0, float(epochs), high_open=True)
    start = float(optim.get("start_lr_factor", 0.0))
    end = float(optim.get("end_lr_factor", 0.0))
    check_range(f"{prefix}.start_lr_factor", start, 0.0, 1.0)
    check_range(f"{prefix}.end_lr_factor", end, 0.0, 1.0)
    shape = optim.get("decay_shape", "linear")
    check_choice(f"{prefix}.decay_shape", shape, DECAY_SHAPES)
    if shape == "exponential" and end <= 0.0:
      raise UserError(f"{prefix}.end_lr_factor=0.0 is not allowed with "
                      "decay_shape='exponential'; use a value in (0, 1]")


def make_schedule(optim, steps_per_epoch: int, prefix: str = "optim"
                  ) -> optax.Schedule:
  """Learning rate per step from `optim` (epoch-based boundaries)."""
  validate(optim, prefix)
  name = optim.get("schedule", "piecewise")
  total = int(optim.epochs) * steps_per_epoch
  if name == "piecewise":
    bounds = {int(e) * steps_per_epoch: float(optim.lr_decay_factor)
              for e in optim.lr_decay_epochs if 0 < int(e) < int(optim.epochs)}
    return optax.piecewise_constant_schedule(float(optim.lr), bounds)
  if name == "cosine":
    return optax.cosine_decay_schedule(float(optim.lr), max(total, 1))
  if name == "constant":
    return optax.constant_schedule(float(optim.lr))
  return slow_start_fast_decay(optim, steps_per_epoch)


def slow_start_fast_decay(optim, steps_per_epoch: int) -> optax.Schedule:
  """AFT's schedule from `optim` (see the module docstring)."""
  peak = float(optim.lr)
  epochs = int(optim.epochs)
  warmup = float(optim.get("warmup_epochs", 0.0))
  start = float(optim.get("start_lr_factor", 0.0))
  end = float(optim.get("end_lr_factor", 0.0))
  shape = optim.get("decay_shape", "linear")
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

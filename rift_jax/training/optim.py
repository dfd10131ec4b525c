"""The optimiser settings (`Optim`, read once from a config's `optim` block)
and the optimiser they make: SGD with momentum, PyTorch-style weight decay,
the learning-rate schedule of `rift_jax.training.schedules`, and an optional
mask that freezes parameters (RiFT's fine-tuning of one module).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from rift_jax.errors import UserError, check_choice, check_range
from rift_jax.training import schedules

SCHEDULES = ("piecewise", "cosine", "constant", "slow_start_fast_decay")
DECAY_SHAPES = ("linear", "cosine", "exponential")


@dataclasses.dataclass(frozen=True)
class Optim:
  """SGD and its learning-rate schedule (fields: `configs/common.py`'s
  `optim` block; the schedules: `rift_jax.training.schedules`)."""
  lr: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 5e-4
  nesterov: bool = False
  batch_size: int = 128
  epochs: int = 110
  schedule: str = "piecewise"
  lr_decay_epochs: tuple[int, ...] = (100, 105)
  lr_decay_factor: float = 0.1
  # schedule='slow_start_fast_decay' only (AFT):
  warmup_epochs: float = 0.0
  start_lr_factor: float = 0.0
  decay_shape: str = "linear"
  end_lr_factor: float = 0.0

  @classmethod
  def from_config(cls, block, prefix: str = "optim",
                  allow_zero_lr: bool = False) -> "Optim":
    """The settings of a config block (a ConfigDict or dict), every field
    checked (`validate`); a key the block lacks keeps its default."""
    d = dict(block)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
      raise UserError(f"{prefix}.{unknown[0]} is not an optimiser setting; "
                      f"the settings are: {', '.join(fields)}")
    kw = {}
    for k, v in d.items():
      kind = type(getattr(cls(), k))
      try:
        kw[k] = (tuple(int(e) for e in v) if kind is tuple else
                 v if kind is bool or kind is str else kind(v))
      except (TypeError, ValueError):
        raise UserError(f"{prefix}.{k}={v!r} is not a {kind.__name__}") from None
    return cls(**kw).validate(prefix, allow_zero_lr)

  def validate(self, prefix: str = "optim",
               allow_zero_lr: bool = False) -> "Optim":
    """Every field, one line naming a bad value. `allow_zero_lr`: lr 0 is
    allowed (RiFT fine-tuning at lr 0 moves only the BatchNorm statistics:
    a diagnostic)."""
    check_range(f"{prefix}.lr", self.lr, 0.0, low_open=not allow_zero_lr)
    check_range(f"{prefix}.momentum", self.momentum, 0.0, 1.0, high_open=True)
    check_range(f"{prefix}.weight_decay", self.weight_decay, 0.0)
    check_choice(f"{prefix}.nesterov", self.nesterov, (False, True))
    check_range(f"{prefix}.batch_size", self.batch_size, 1)
    check_range(f"{prefix}.epochs", self.epochs, 1)
    check_choice(f"{prefix}.schedule", self.schedule, SCHEDULES)
    if self.schedule == "piecewise":
      check_range(f"{prefix}.lr_decay_factor", self.lr_decay_factor, 0.0)
      for e in self.lr_decay_epochs:
        check_range(f"{prefix}.lr_decay_epochs entry", e, 0)
    if self.schedule == "slow_start_fast_decay":
      check_range(f"{prefix}.warmup_epochs", self.warmup_epochs, 0.0,
                  float(self.epochs), high_open=True)
      check_range(f"{prefix}.start_lr_factor", self.start_lr_factor, 0.0, 1.0)
      check_range(f"{prefix}.end_lr_factor", self.end_lr_factor, 0.0, 1.0)
      check_choice(f"{prefix}.decay_shape", self.decay_shape, DECAY_SHAPES)
      if self.decay_shape == "exponential" and self.end_lr_factor <= 0.0:
        raise UserError(f"{prefix}.end_lr_factor=0.0 is not allowed with "
                        "decay_shape='exponential'; use a value in (0, 1]")
    return self


def make_optimizer(optim: Optim, steps_per_epoch: int,
                   mask: Any = None) -> optax.GradientTransformation:
  """SGD with momentum and PyTorch-style weight decay (added to the gradient
  before momentum), learning rate from `rift_jax.training.schedules`.

  With `mask` (bool pytree like the params), only True leaves are trained:
  `optax.multi_transform` gives every other leaf exactly zero update, no
  weight decay and no optimiser state.
  """
  tx = optax.chain(
      optax.add_decayed_weights(optim.weight_decay),
      optax.sgd(schedules.make_schedule(optim, steps_per_epoch),
                momentum=optim.momentum or None, nesterov=optim.nesterov))
  if mask is None:
    return tx
  labels = jax.tree_util.tree_map(lambda m: "train" if m else "freeze", mask)
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()},
                               labels)

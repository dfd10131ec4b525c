"""Training objectives: pure functions returning (loss, (batch_stats, metrics)).

Signature of every objective:
  objective(ctx, params, batch_stats, x, y, rng) -> (loss, (new_batch_stats, metrics))
with `x` `[batch, H, W, C]` already augmented, `y` `[batch]` int labels.
`ctx` is a hashable `Context` holding the model functions and static
hyperparameters, so the jitted train step compiles once.

BatchNorm policy (written down because it changes results):
- While crafting adversarial examples, BN runs in the mode `ctx.attack_bn`
  ('train': batch statistics, as Bag-of-Tricks' PGD-AT; 'eval': running
  averages). Attack passes never update the running averages.
- The loss pass runs in train mode and its batch statistics update the
  running averages: in PGD-AT that is the adversarial batch only.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rift_jax import attacks
from rift_jax.models import ModelFns


@dataclasses.dataclass(frozen=True)
class Context:
  fns: ModelFns
  attack: attacks.PGDConfig
  attack_bn: str = "train"  # 'train' | 'eval'
  hparams: tuple = ()       # method-specific (name, value) pairs

  def hp(self, name: str, default: Any = None) -> Any:
    return dict(self.hparams).get(name, default)

  def attack_logits_fn(self, variables):
    train = self.attack_bn == "train"
    return lambda xa: self.fns.logits(variables, xa, train=train)


def _accuracy(logits, y):
  return jnp.mean(jnp.argmax(logits, -1) == y)


def natural(ctx: Context, params, batch_stats, x, y, rng):
  """Plain cross-entropy on clean images."""
  del rng
  logits, bs = ctx.fns.logits_and_stats({"params": params,
                                         "batch_stats": batch_stats}, x)
  loss = jnp.mean(attacks.cross_entropy(logits, y))
  return loss, (bs, {"loss": loss, "acc": _accuracy(logits, y)})


def pgd_at(ctx: Context, params, batch_stats, x, y, rng):
  """Madry et al. PGD-AT: cross-entropy on PGD examples crafted against θ."""
  variables = {"params": params, "batch_stats": batch_stats}
  x_adv = attacks.pgd(ctx.attack_logits_fn(variables), x, y, rng, ctx.attack)
  logits, bs = ctx.fns.logits_and_stats(variables, x_adv)
  loss = jnp.mean(attacks.cross_entropy(logits, y))
  return loss, (bs, {"loss": loss, "acc": _accuracy(logits, y)})


OBJECTIVES: dict[str, Callable] = {
    "natural": natural,
    "pgd_at": pgd_at,
}

# Methods that carry state besides params/batch_stats (kept in TrainState.extra
# and checkpointed): method -> function(variables) -> initial extra state.
EXTRA_STATE: dict[str, Callable] = {}

"""The registry of training methods: name -> `objectives.Method`.

    natural | pgd_at | trades | mart | score | awp | cure | aft

Each method's hyperparameters live in the config block of its name
(`config.trades.beta`, `config.cure.p`, ...; AFT's are in `config.optim`,
see `rift_jax.training.schedules`). This module imports every method module, so no
method module needs to know the registry (no import cycles).
"""
from __future__ import annotations

from rift_jax import attacks
from rift_jax.training import cure, objectives
from rift_jax.errors import check_choice

METHODS: dict[str, objectives.Method] = {m.name: m for m in (
    objectives.natural, objectives.pgd_at, objectives.trades, objectives.mart,
    objectives.score, objectives.awp, cure.method, objectives.aft)}
BN_MODES = ("train", "eval")


def get(name: str) -> objectives.Method:
  """The method called `name`; one clear error naming the valid ones."""
  check_choice("method", name, tuple(METHODS))
  return METHODS[name]


def context(config, fns=None) -> objectives.Context:
  """The static context of `config.method` (model functions, the training
  attack, BN mode while crafting and which passes update the running
  averages — `attack.bn_passes`, 'authors' when absent —, the method's
  hyperparameters), validated:
  an unknown method, attack setting or hyperparameter is one clear error.
  `fns` may be None to validate a config before any model exists."""
  method = get(config.method)
  bn = config.attack.get("bn_mode", "train")
  check_choice("attack.bn_mode", bn, BN_MODES)
  passes = config.attack.get("bn_passes", "authors")
  check_choice("attack.bn_passes", passes, objectives.BN_PASSES)
  block = config.get(config.method, None)
  hparams = tuple(sorted(block.to_dict().items())) if block is not None else ()
  ctx = objectives.Context(fns=fns,
                           attack=attacks.PGDConfig.from_config(config.attack,
                                                                "attack"),
                           attack_bn=bn, hparams=hparams, bn_passes=passes)
  method.check(ctx)
  return ctx

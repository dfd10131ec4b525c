"""Training: the train state, step and epoch loop (`loop`; forwarded
from the package), the objectives of PGD-AT, TRADES, MART, AWP and
SCORE (`objectives`), CURE (`cure`), the method table (`methods`) and
learning-rate schedules (`schedules`, AFT's included).

Names are forwarded on first use, so importing a sibling module (e.g.
`rift_jax.evaluation.stats`, pure numpy) does not import the core module.
"""
import importlib as _importlib

_CORE = "rift_jax.training.loop"
__all__ = ['FitResult', 'TrainResult', 'TrainState', 'check_optim', 'create_state', 'fit', 'make_optimizer', 'make_train_step', 'train_and_evaluate']


def __getattr__(name: str):
  if name in __all__:
    value = getattr(_importlib.import_module(_CORE), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'rift_jax.training' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)

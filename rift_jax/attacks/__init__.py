"""Attacks as pure functions over a logits function: PGD and the parts
every attack shares (`common`: losses, projections, random starts), APGD
(`apgd`), FAB (`fab`) and Square (`square`). The package forwards
`common`s API (`attacks.PGDConfig`, `attacks.pgd`, ...).

Names are forwarded on first use, so importing a sibling module (e.g.
`rift_jax.evaluation.stats`, pure numpy) does not import the core module.
"""
import importlib as _importlib

_CORE = "rift_jax.attacks.common"
__all__ = ['CPU_STEPS_PER_CALL', 'INITS', 'LOSSES', 'NORMS', 'PGDConfig', 'ascent_step', 'check_per_call', 'cross_entropy', 'dlr', 'dlr_targeted', 'keep_worst', 'kl_divergence', 'margin', 'pgd', 'project', 'random_init', 'resolve_per_call', 'resolve_unroll', 'softmax_squared_error', 'target_classes']


def __getattr__(name: str):
  if name in __all__:
    value = getattr(_importlib.import_module(_CORE), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'rift_jax.attacks' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)

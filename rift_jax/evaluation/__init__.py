"""Evaluation: the batched evaluation loop (`loop`: clean and attacked
accuracy per example; forwarded from the package), the attack suite
and AutoAttack (`suite`, `autoattack`), per-example records, paired
statistics and reports (`records`, `paired`, `stats`, `report`).

Names are forwarded on first use, so importing a sibling module (e.g.
`rift_jax.evaluation.stats`, pure numpy) does not import the core module.
"""
import importlib as _importlib

_CORE = "rift_jax.evaluation.loop"
__all__ = ['AttackFn', 'Batches', 'Evaluator', 'per_example', 'pgd_attack_fn']


def __getattr__(name: str):
  if name in __all__:
    value = getattr(_importlib.import_module(_CORE), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'rift_jax.evaluation' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)

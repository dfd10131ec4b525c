"""Evaluation: the batched evaluation loop (`loop`: clean and attacked
accuracy per example; forwarded from the package), the attack suite
and AutoAttack (`suite`, `autoattack`), per-example records, paired
statistics and reports (`records`, `paired`, `stats`, `report`).

Names are forwarded on first use (`rift_jax._lazy`), so importing a sibling
module (e.g. `rift_jax.evaluation.stats`, pure numpy) does not import the
core module.
"""

from rift_jax._lazy import forward as _forward

__all__ = ['AttackFn', 'Batches', 'Evaluator', 'per_example', 'pgd_attack_fn']
__getattr__, __dir__ = _forward(__name__, dict.fromkeys(__all__, "rift_jax.evaluation.loop"))

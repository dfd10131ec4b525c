"""Attacks as pure functions over a logits function: PGD and the parts
every attack shares (`common`: losses, projections, random starts), APGD
(`apgd`), FAB (`fab`) and Square (`square`). The package forwards
`common`s API (`attacks.PGDConfig`, `attacks.pgd`, ...).

Names are forwarded on first use (`rift_jax._lazy`), so importing a sibling
module (e.g. `rift_jax.evaluation.stats`, pure numpy) does not import the
core module.
"""

from rift_jax._lazy import forward as _forward

__all__ = ['CPU_STEPS_PER_CALL', 'INITS', 'LOSSES', 'NORMS', 'PGDConfig', 'ascent_step', 'check_per_call', 'cross_entropy', 'dlr', 'dlr_targeted', 'in_pieces', 'keep_worst', 'kl_divergence', 'margin', 'outcome', 'pgd', 'project', 'random_init', 'resolve_per_call', 'resolve_unroll', 'softmax_squared_error', 'target_classes']
__getattr__, __dir__ = _forward(__name__, dict.fromkeys(__all__, "rift_jax.attacks.common"))

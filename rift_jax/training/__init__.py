"""Training: the train state, step and epoch loop (`loop`; forwarded
from the package), the objectives of PGD-AT, TRADES, MART, AWP and
SCORE (`objectives`), CURE (`cure`), the method table (`methods`) and
the optimiser settings and the optimiser (`optim`: `Optim`,
`make_optimizer`) and learning-rate schedules (`schedules`, AFT's included).

Names are forwarded on first use (`rift_jax._lazy`), so importing a sibling
module (e.g. `rift_jax.evaluation.stats`, pure numpy) does not import the
core module.
"""

from rift_jax._lazy import forward as _forward

__all__ = ['FitResult', 'Optim', 'TrainResult', 'TrainState', 'create_state', 'fit', 'make_optimizer', 'make_train_step', 'train_and_evaluate']
__getattr__, __dir__ = _forward(__name__, {
    **dict.fromkeys(__all__, "rift_jax.training.loop"),
    "Optim": "rift_jax.training.optim",
    "make_optimizer": "rift_jax.training.optim"})

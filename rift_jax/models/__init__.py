"""Models: the zoo (`zoo`: ResNets, WideResNet, the module names of the
PyTorch code, `ModelFns`; forwarded from the package), the models a
config names (`build`), convolution rules (`conv`), PyTorch weights in
and out (`convert`, `torch_models`) and checkpoints (`checkpoint`).

Names are forwarded on first use (`rift_jax._lazy`), so importing a sibling
module (e.g. `rift_jax.evaluation.stats`, pure numpy) does not import the
core module.
"""

from rift_jax._lazy import forward as _forward

# The zoo, and what a config names (`build`).
_ZOO = ['BasicBlock', 'COMPUTE_DTYPES', 'DMBlock', 'DMPreActBlock', 'DMPreActResNet', 'DMWideResNet', 'HEADS', 'MODEL_NAMES', 'ModelFns', 'PreActBlock', 'ResNet', 'STAGE_SIZES', 'STEMS', 'SmallCNN', 'WideBasic', 'WideResNet', 'check_name', 'compute_dtype', 'create_model', 'flax_name', 'get_path', 'init_variables', 'module_mask', 'path_to_name', 'perturbable_modules', 'resolve_modules', 'set_path']
_BUILD = ['build_model', 'model_meta', 'normalization']
__all__ = _ZOO + _BUILD
__getattr__, __dir__ = _forward(__name__, {
    **dict.fromkeys(_ZOO, "rift_jax.models.zoo"),
    **dict.fromkeys(_BUILD, "rift_jax.models.build")})

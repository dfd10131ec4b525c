"""Models: the zoo (`zoo`: ResNets, WideResNet, the module names of the
PyTorch code, `ModelFns`; forwarded from the package), the models a
config names (`build`), convolution rules (`conv`), PyTorch weights in
and out (`convert`, `torch_models`) and checkpoints (`checkpoint`).

Names are forwarded on first use, so importing a sibling module (e.g.
`rift_jax.evaluation.stats`, pure numpy) does not import the core module.
"""
import importlib as _importlib

_CORE = "rift_jax.models.zoo"
# What a config names (`build`) is forwarded too.
_BUILD = ['build_model', 'model_meta', 'normalization']
__all__ = ['BasicBlock', 'COMPUTE_DTYPES', 'DMBlock', 'DMPreActBlock', 'DMPreActResNet', 'DMWideResNet', 'HEADS', 'MODEL_NAMES', 'ModelFns', 'PreActBlock', 'ResNet', 'STAGE_SIZES', 'STEMS', 'SmallCNN', 'WideBasic', 'WideResNet', 'check_name', 'compute_dtype', 'create_model', 'flax_name', 'get_path', 'init_variables', 'module_mask', 'path_to_name', 'perturbable_modules', 'resolve_modules', 'set_path'] + _BUILD


def __getattr__(name: str):
  if name in __all__:
    module = "rift_jax.models.build" if name in _BUILD else _CORE
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'rift_jax.models' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)

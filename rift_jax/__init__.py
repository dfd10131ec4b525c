"""rift-jax: RiFT, adversarial training, CURE and AFT in JAX/Flax.

RiFT's three steps (Zhu et al., ICCV 2023), each one function over the same
model handle (`ModelFns`):

    from rift_jax import ModelFns, create_model, fixed_adversarial_set, mrc, \
        least_critical, finetune, interpolate
    fns = ModelFns(model)
    x_adv, y = fixed_adversarial_set(fns, variables, val_split, attack, rng, 256)
    scores = mrc(fns, variables, x_adv, y)                 # step 1
    module = least_critical(scores)[0]
    ft = finetune(fns, variables, dataset, [module])        # step 2
    res = interpolate(fns, variables, ft.variables, dataset.val, attack_fn, rng)
    theta_star = res.theta_star                             # step 3

The names are loaded on first use, so `import rift_jax.evaluation.stats` (pure numpy)
does not import JAX.

Importing the package sets one XLA:CPU default (before JAX creates its CPU
backend; GPU and TPU compilation ignore it): convolutions are left to XLA's
own Eigen kernels instead of the YNNPACK library fusion, which on the 2-core
x86 machines we measured ran ResNet convolutions at half the speed
(`launch/benchmark.py`; PGD-10 on ResNet-18, batch 128: 25.7 s -> 17.4 s).
The flag is set only for jaxlib versions it was measured on (an unknown flag
aborts XLA), never over a value the user put in XLA_FLAGS, and not at all
with RIFT_JAX_XLA_DEFAULTS=0. XLA reads its flags once, when JAX first
creates the CPU backend: import rift_jax before running any JAX computation
(importing JAX first is fine).
"""
import os as _os

_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
_MEASURED_JAXLIB = ((0, 10),)


def _set_xla_cpu_defaults() -> None:
  if _os.environ.get("RIFT_JAX_XLA_DEFAULTS", "1") == "0":
    return
  flags = _os.environ.get("XLA_FLAGS", "")
  if _YNN_FLAG in flags:
    return
  try:
    import jaxlib.version
    version = tuple(jaxlib.version.__version_info__[:2])
  except (ImportError, AttributeError):
    return
  if version not in _MEASURED_JAXLIB:
    return
  _os.environ["XLA_FLAGS"] = f"{flags} {_YNN_FLAG}=-individual_convolution".strip()


_set_xla_cpu_defaults()


# Public API: name -> (module, attribute), imported on first access.
_API = {
    "mrc": ("rift_jax.rift.criticality", "mrc"),
    "fixed_adversarial_set": ("rift_jax.rift.criticality", "fixed_adversarial_set"),
    "least_critical": ("rift_jax.rift.criticality", "least_critical"),
    "most_critical": ("rift_jax.rift.criticality", "most_critical"),
    "MRCResult": ("rift_jax.rift.criticality", "MRCResult"),
    "finetune": ("rift_jax.rift.finetuning", "finetune"),
    "interpolate": ("rift_jax.rift.interpolation", "interpolate"),
    "ModelFns": ("rift_jax.models", "ModelFns"),
    "create_model": ("rift_jax.models", "create_model"),
    "init_variables": ("rift_jax.models", "init_variables"),
    "perturbable_modules": ("rift_jax.models", "perturbable_modules"),
    "PGDConfig": ("rift_jax.attacks", "PGDConfig"),
    "pgd": ("rift_jax.attacks", "pgd"),
    "pgd_attack_fn": ("rift_jax.evaluation", "pgd_attack_fn"),
    "Evaluator": ("rift_jax.evaluation", "Evaluator"),
    "paired_bootstrap": ("rift_jax.evaluation.stats", "paired_bootstrap"),
    "mcnemar": ("rift_jax.evaluation.stats", "mcnemar"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
  if name in _API:
    import importlib
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'rift_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)

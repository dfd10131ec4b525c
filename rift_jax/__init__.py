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
own Eigen kernels instead of the YNNPACK library fusion, which ran ResNet
convolutions at about half the speed on the CPUs we measured (`benchmarks/`;
the numbers: docs/performance.md).
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
  # The installed jaxlib's version from its package metadata: importing
  # jaxlib itself would load its native libraries into every process that
  # imports rift_jax, PyTorch-only ones too (benchmarks/autoattack.py's
  # torchattacks process; docs/performance.md).
  from importlib import metadata
  try:
    version = tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
  except (metadata.PackageNotFoundError, ValueError):
    return
  if version not in _MEASURED_JAXLIB:
    return
  _os.environ["XLA_FLAGS"] = f"{flags} {_YNN_FLAG}=-individual_convolution".strip()


_set_xla_cpu_defaults()


# Public API: name -> the module that defines it, imported on first access.
_API = {
    "mrc": "rift_jax.rift.criticality",
    "fixed_adversarial_set": "rift_jax.rift.criticality",
    "least_critical": "rift_jax.rift.criticality",
    "most_critical": "rift_jax.rift.criticality",
    "MRCResult": "rift_jax.rift.criticality",
    "finetune": "rift_jax.rift.finetuning",
    "interpolate": "rift_jax.rift.interpolation",
    "ModelFns": "rift_jax.models",
    "create_model": "rift_jax.models",
    "init_variables": "rift_jax.models",
    "perturbable_modules": "rift_jax.models",
    "PGDConfig": "rift_jax.attacks",
    "pgd": "rift_jax.attacks",
    "pgd_attack_fn": "rift_jax.evaluation",
    "Evaluator": "rift_jax.evaluation",
    "paired_bootstrap": "rift_jax.evaluation.stats",
    "mcnemar": "rift_jax.evaluation.stats",
}
__all__ = sorted(_API)

from rift_jax._lazy import forward as _forward  # noqa: E402

__getattr__, __dir__ = _forward(__name__, _API)

"""rift-jax: RiFT, adversarial training, CURE and AFT in JAX/Flax.

Importing the package sets one XLA:CPU default (before JAX creates its CPU
backend; GPU and TPU compilation ignore it): convolutions are left to XLA's
own Eigen kernels instead of the YNNPACK library fusion, which on the 2-core
x86 machines we measured ran ResNet convolutions at half the speed
(`launch/benchmark.py`; PGD-10 on ResNet-18, batch 128: 25.7 s -> 17.4 s).
The flag is set only for jaxlib versions it was measured on (an unknown flag
aborts XLA), never over a value the user put in XLA_FLAGS, and not at all
with RIFT_JAX_XLA_DEFAULTS=0.
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
  import sys
  if "jax" in sys.modules:
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
      import warnings
      warnings.warn("rift_jax imported after JAX started its backends: XLA:CPU "
                    f"keeps its YNNPACK convolutions (slower on CPU); import "
                    f"rift_jax first or set XLA_FLAGS={_YNN_FLAG}="
                    "-individual_convolution", stacklevel=3)
      return
  _os.environ["XLA_FLAGS"] = f"{flags} {_YNN_FLAG}=-individual_convolution".strip()


_set_xla_cpu_defaults()

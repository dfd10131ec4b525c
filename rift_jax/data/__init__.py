"""Data: the data sets (`datasets`: TFDS, the offline Fashion-MNIST,
splits, batches, augmentation; forwarded from the package) and the
corrupted sets for OOD evaluation (`corruptions`).

Names are forwarded on first use, so importing a sibling module (e.g.
`rift_jax.evaluation.stats`, pure numpy) does not import the core module.
"""
import importlib as _importlib

_CORE = "rift_jax.data.datasets"
__all__ = ['DATASET_NAMES', 'DEBIAN_FASHION_MNIST', 'DEBIAN_TFDS_NAME', 'DEBIAN_TFDS_VERSION', 'Dataset', 'DatasetInfo', 'INFO', 'Split', 'augment', 'eval_batches', 'load', 'original_order', 'read_idx', 'split_dataset', 'synthetic_splits', 'to_float', 'train_batches']


def __getattr__(name: str):
  if name in __all__:
    value = getattr(_importlib.import_module(_CORE), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'rift_jax.data' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)

"""Data: the data sets (`datasets`: TFDS, the offline Fashion-MNIST,
splits, batches, augmentation; forwarded from the package) and the
corrupted sets for OOD evaluation (`corruptions`).

Names are forwarded on first use (`rift_jax._lazy`), so importing a sibling
module (e.g. `rift_jax.evaluation.stats`, pure numpy) does not import the
core module.
"""

from rift_jax._lazy import forward as _forward

__all__ = ['DATASET_NAMES', 'DEBIAN_FASHION_MNIST', 'DEBIAN_TFDS_NAME', 'DEBIAN_TFDS_VERSION', 'Dataset', 'DatasetInfo', 'INFO', 'Split', 'augment', 'eval_batches', 'load', 'original_order', 'read_idx', 'split_dataset', 'synthetic_splits', 'to_float', 'train_batches']
__getattr__, __dir__ = _forward(__name__, dict.fromkeys(__all__, "rift_jax.data.datasets"))

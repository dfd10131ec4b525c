"""From a config to the model it describes (ml_collections in, Flax out).

`model.input_normalization` is the ONE place that says how a model expects
its inputs (every model takes images in [0, 1] and normalises inside):
- 'dataset': with the data set's mean/std (`data.INFO`) — this project's
  training, RiFT's and most research code;
- 'none': no normalisation (mean 0, std 1) — RobustBench models, which take
  [0, 1] inputs;
- an explicit pair `((m_1, ..., m_C), (s_1, ..., s_C))` (or one value each).
A PyTorch checkpoint is imported into the same model, so the setting must
match how that checkpoint was trained.
"""
from __future__ import annotations

from typing import Sequence

from rift_jax import data, models
from rift_jax.errors import UserError



def normalization(config, info: data.DatasetInfo
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) per channel from `config.model.input_normalization`."""
  norm = config.model.get("input_normalization", "dataset")
  if isinstance(norm, str):
    if norm == "dataset":
      return tuple(info.mean), tuple(info.std)
    if norm == "none":
      c = info.image_shape[-1]
      return (0.0,) * c, (1.0,) * c
    raise UserError(f"model.input_normalization={norm!r} is not allowed; "
                    "choose 'dataset', 'none' or a (mean, std) pair")
  try:
    mean, std = norm
    mean, std = _per_channel(mean, info), _per_channel(std, info)
  except (TypeError, ValueError):
    raise UserError(f"model.input_normalization={norm!r} is not allowed; "
                    "choose 'dataset', 'none' or a (mean, std) pair with one "
                    f"value or {info.image_shape[-1]} values each") from None
  if min(std) <= 0:
    raise UserError(f"model.input_normalization={norm!r}: std must be > 0")
  return mean, std


def _per_channel(v, info) -> tuple[float, ...]:
  c = info.image_shape[-1]
  v = (float(v),) if not isinstance(v, Sequence) else tuple(float(a) for a in v)
  if len(v) == 1:
    v = v * c
  if len(v) != c:
    raise ValueError(v)
  return v


def build_model(config, info: data.DatasetInfo):
  """The Flax model of `config.model` for data set `info`."""
  mean, std = normalization(config, info)
  return models.create_model(config.model.name, num_classes=info.num_classes,
                             width=config.model.get("width"), mean=mean, std=std,
                             conv_impl=config.model.get("conv_impl", "auto"),
                             dtype=config.model.get("compute_dtype", "float32"))


def model_meta(config, info: data.DatasetInfo) -> dict:
  """What a checkpoint records about its model (checked before restoring)."""
  return {"name": config.model.name, "width": config.model.get("width"),
          "num_classes": info.num_classes, "image_shape": list(info.image_shape)}

"""Every config value checked before any work.

A typo in the last block of a config (`--config.rift.mrc.epsilon=-1`) must
fail in the first second, not after hours of training θ_AT. Each entry point
calls one of these at its boundary (`launch/*`, `pipeline.run`):

- `validate_train(config)`: data, model, method + its block, optim (and its
  schedule), the training attack, eval, init_from;
- `validate_rift(config)`: the above (or the θ_AT checkpoint) and every
  `rift.*` block, module names resolved on the abstract model (no compute),
  and `check_installed`;
- `validate_evaluate(config)`: data, model and the `evaluate` block (its plan);
- `check_installed(config)`: every package a RiFT run imports late (the θ*
  export, the OOD generator, the plots), imported now.

Each raises `UserError` with one line naming the full key, the bad value and
what is allowed; the checks themselves live with the code that uses the
values (`criticality.check_settings`, `training.Optim.from_config`, ...), so there is
one definition of "allowed" per setting.
"""
from __future__ import annotations

import importlib
import os
import re

import jax

from rift_jax import attacks, data, models, training
from rift_jax.data import corruptions
from rift_jax.models import checkpoint
from rift_jax.rift import criticality, finetuning, interpolation
from rift_jax.training import methods
from rift_jax.errors import UserError, check_choice, check_range
from rift_jax.experiments import robustness

DATA_SOURCES = ("tfds", "debian")


def _bool(name: str, value) -> None:
  if not isinstance(value, bool):
    raise UserError(f"{name}={value!r} is not allowed; use True or False")


def validate_common(config) -> None:
  """data, model and eval: what every entry point reads."""
  check_range("seed", int(config.seed), 0)
  d = config.data
  check_choice("data.name", d.name, data.DATASET_NAMES)
  check_choice("data.source", d.get("source", "tfds"), DATA_SOURCES)
  check_range("data.val_size", int(d.val_size), 1)
  check_range("data.train_size", int(d.get("train_size", 0) or 0), 0)
  check_range("data.test_size", int(d.get("test_size", 0) or 0), 0)
  m = config.model
  models.check_name(m.name)
  if m.get("width") is not None:
    check_range("model.width", int(m.width), 1)
  from rift_jax.models import conv
  check_choice("model.conv_impl", m.get("conv_impl", "auto"), conv.IMPLS)
  check_choice("model.compute_dtype", m.get("compute_dtype", "float32"),
               models.COMPUTE_DTYPES)
  models.normalization(config, data.INFO[d.name])
  check_range("eval.batch_size", int(config.eval.batch_size), 1)
  attacks.PGDConfig.from_config(config.eval.attack, "eval.attack")


def validate_train(config) -> None:
  """Everything `training.train_and_evaluate` reads."""
  validate_common(config)
  method = methods.get(config.method)
  methods.context(config)   # the method's block and the training attack
  training.Optim.from_config(config.optim)
  _bool("augment", config.get("augment", True))
  check_range("log_every", int(config.get("log_every", 10)), 1)
  init_from = config.get("init_from", "") or ""
  if method.starts_from_pretrained and not init_from:
    raise UserError(f"method={config.method!r} fine-tunes a naturally trained "
                    "model: set --config.init_from to a natural run's workdir "
                    "or a variables folder")
  if init_from:
    check_checkpoint(config, init_from, "init_from")


def validate_rift(config) -> None:
  """Everything `pipeline.run` reads, before any work."""
  r = config.rift
  if r.at_checkpoint:
    validate_common(config)
    check_checkpoint(config, r.at_checkpoint, "rift.at_checkpoint")
  else:
    validate_train(config)
  mrc = r.mrc
  n = int(mrc.num_examples)
  check_range("rift.mrc.num_examples", n, 1)
  if n > int(config.data.val_size):
    raise UserError(f"rift.mrc.num_examples={n} exceeds "
                    f"data.val_size={config.data.val_size}")
  attacks.PGDConfig.from_config(mrc.attack, "rift.mrc.attack")
  criticality.check_settings(
      epsilon=float(mrc.epsilon), learning_rate=float(mrc.learning_rate),
      num_passes=int(mrc.num_passes), batch_size=int(mrc.batch_size),
      projection=mrc.projection, mode=mrc.mode, route=mrc.route,
      prefix_cache_mb=float(mrc.prefix_cache_mb))
  check_range("rift.mrc.vmap_chunk", int(mrc.vmap_chunk), 1)
  for key in ("include", "exclude"):
    try:
      re.compile(mrc.get(key) or "")
    except re.error as e:
      raise UserError(f"rift.mrc.{key}={mrc.get(key)!r} is not a regular "
                      f"expression: {e}") from None
  ft = r.finetune
  check_choice("rift.finetune.target", ft.target, finetuning.TARGETS)
  check_choice("rift.finetune.candidates", ft.candidates, finetuning.CANDIDATES)
  check_range("rift.finetune.k", int(ft.k), 1)
  _bool("rift.finetune.update_batch_stats", ft.update_batch_stats)
  _bool("rift.finetune.augment", ft.augment)
  for lr in ft.lr_sweep:
    check_range("rift.finetune.lr_sweep entry", float(lr), 0.0, low_open=True)
  training.Optim.from_config(ft.optim, "rift.finetune.optim",
                             allow_zero_lr=True)
  interpolation.check_alphas(r.alphas)
  check_range("rift.tolerance", float(r.tolerance), 0.0)
  check_range("rift.noninferiority_margin", float(r.noninferiority_margin), 0.0)
  check_choice("rift.alpha_rule", r.alpha_rule, interpolation.ALPHA_RULES)
  _bool("rift.ood_val.enabled", r.ood_val.enabled)
  _bool("rift.bn_swap", r.bn_swap)
  if r.ood_val.enabled:
    corruptions.check_block(r.ood_val, "rift.ood_val")
    check_choice("rift.ood_val.source", r.ood_val.source, ("generated",))
    if int(r.ood_val.max_images) > int(config.data.val_size) or int(
        r.ood_val.max_images) < 1:
      raise UserError(f"rift.ood_val.max_images={r.ood_val.max_images} must lie "
                      f"in [1, data.val_size={config.data.val_size}]")
  elif r.alpha_rule == "robust_and_ood":
    raise UserError("rift.alpha_rule='robust_and_ood' needs corrupted validation "
                    "images: set rift.ood_val.enabled=True")
  check_range("rift.alpha_chunk", int(r.alpha_chunk), 0)
  for a in r.ablations:
    check_choice("rift.ablations entry", a, finetuning.TARGETS[:-1])
  attacks.PGDConfig.from_config(r.test_attack, "rift.test_attack")
  _bool("rift.export_theta_ft", r.export_theta_ft)
  _bool("rift.ood.enabled", r.ood.enabled)
  if r.ood.enabled:
    corruptions.check_block(r.ood, "rift.ood")
  check_modules(config)
  check_installed(config)


def check_installed(config) -> None:
  """Imports, in the run's first second, every package that `pipeline.run`
  needs only after its expensive stages, so a missing one is one line (exit
  2) before θ_AT is trained, not a traceback at minute 14."""
  needs = [("safetensors.numpy", "safetensors",
            "the θ* export, theta_star.safetensors"),
           ("matplotlib.figure", "matplotlib",
            "the report's plots, mrc.png and interpolation.png"),
           ("scipy.stats", "scipy", "the paired statistics in results.json")]
  if config.data.name != "synthetic":
    needs.append(("tensorflow_datasets", "tensorflow-datasets",
                  f"reading data.name={config.data.name!r}"))
  if (config.rift.ood.enabled and corruptions.canonical_source(
      config.rift.ood.source, "rift.ood.source") == "generated"
      or config.rift.ood_val.enabled):
    needs.append(("imagecorruptions", "imagecorruptions-imaug",
                  "rift.ood.source='generated' (the corrupted test images)"))
  for module, package, why in needs:
    try:
      importlib.import_module(module)
    except Exception as e:  # ImportError, or a package that breaks on import
      raise UserError(
          f"the Python package {package!r} cannot be imported ({why}): "
          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; install "
          f"the base set with `make install` (or `pip install {package}`)"
      ) from None


def check_modules(config) -> None:
  """Module names and filters, on the abstract model (no compute), so a typo
  fails in a second, not after training θ_AT."""
  info = data.INFO[config.data.name]
  model = models.build_model(config, info)
  params = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jax.numpy.zeros((1, *info.image_shape)),
      train=False))["params"]
  r = config.rift
  models.resolve_modules(params, r.mrc.include or None, r.mrc.exclude or None)
  if not finetuning.candidate_modules(params, r.finetune.candidates):
    raise UserError(f"rift.finetune.candidates={r.finetune.candidates!r} "
                    f"selects no module of model.name={config.model.name!r}")
  if r.finetune.target == "modules":
    if not r.finetune.modules:
      raise UserError("rift.finetune.target='modules' needs rift.finetune.modules")
    models.resolve_modules(params, list(r.finetune.modules))


def validate_evaluate(config):
  """data, model and the `evaluate` block; returns the evaluation's
  `suite.Plan` (`rift_jax.experiments.robustness.plan`)."""
  if "evaluate" not in config:
    raise UserError("the config has no 'evaluate' block; use "
                    "--config=configs/evaluate.py:<training config name>")
  validate_common(config)
  return robustness.plan(config)


def check_checkpoint(config, path: str, name: str = "--checkpoint") -> None:
  """A checkpoint argument names a file or folder that fits the configured
  model: a PyTorch file's keys and shapes are checked (the first mismatch
  and the architectures that would fit are named), our own checkpoints'
  recorded model is compared. Cheap: no model is initialised."""
  if not path:
    raise UserError(f"{name} is required (a PyTorch .pth/.pt/.safetensors file, "
                    "a launch.train workdir or a variables folder)")
  from rift_jax import workdir
  from rift_jax.models import convert
  p = os.path.expanduser(str(path))
  info = data.INFO[config.data.name]
  if checkpoint.is_torch_file(p):
    if not os.path.isfile(p):
      raise UserError(f"{name}={path!r} does not exist")
    convert.import_checkpoint(p, models.build_model(config, info),
                              info.image_shape)
    return
  folder = workdir.checkpoint_dir(p)
  if not checkpoint.has_checkpoint(folder):
    raise UserError(f"{name}={path!r} holds no checkpoint (give a PyTorch "
                    ".pth/.pt/.safetensors file, a launch.train workdir or a "
                    "variables folder)")
  ckpt = checkpoint.Checkpointer(folder)
  try:
    checkpoint.check_model(ckpt.read_meta(), models.model_meta(config, info),
                           folder)
  finally:
    ckpt.close()

"""Every shipped config builds, is locked, and passes the RiFT checks."""
import pytest

from configs import (evaluate, methods_paper, paper, quickstart,
                     quickstart_methods, study)
from rift_jax.experiments import validation


@pytest.mark.parametrize("variant", [f"{d},{m}" for d in paper.DATASETS
                                     for m in paper.MODELS] + ["cifar10,resnet18,trades"])
def test_paper_configs_validate(variant):
  c = paper.get_config(variant)
  validation.validate_rift(c)  # every block, and the abstract model of that size
  assert c.rift.finetune.optim.lr == 1e-3 and c.rift.mrc.epsilon == 0.1
  assert c.attack.epsilon == pytest.approx(8 / 255)
  assert c.attack.step_size == pytest.approx(2 / 255)  # not the official 2/225 typo
  with pytest.raises(AttributeError):
    c.rift.not_a_field = 1  # locked: a misspelt override is an error


def test_quickstart_is_the_offline_default():
  c = quickstart.get_config()
  validation.validate_rift(c)
  assert c.data.name == "fashion_mnist" and c.data.source == "debian"
  assert c.rift.ood.enabled


def test_every_shipped_config_validates():
  validation.validate_rift(study.get_config())
  validation.validate_evaluate(evaluate.get_config("quickstart"))
  for m in quickstart_methods.METHODS:
    c = quickstart_methods.get_config(m)
    if m in ("cure", "aft"):
      c.init_from = ""   # the natural run does not exist here
      with pytest.raises(Exception, match="init_from"):
        validation.validate_train(c)
    else:
      validation.validate_train(c)
  for m in methods_paper.METHODS:
    c = methods_paper.get_config(m)
    if m not in ("cure", "aft"):
      validation.validate_train(c)


def test_bad_variant_names_the_allowed_ones():
  with pytest.raises(ValueError, match="dataset in cifar10, cifar100, tiny_imagenet"):
    paper.get_config("mnist,resnet18")


def _shipped_rift_configs():
  yield "quickstart", quickstart.get_config()
  yield "study", study.get_config()
  for v in ("cifar10,resnet18", "cifar100,wrn34_10", "tiny_imagenet,resnet34"):
    yield f"paper:{v}", paper.get_config(v)
  for m in ("pgd_at", "trades"):
    yield f"methods_paper:{m}", methods_paper.get_config(m)
  for m in ("pgd_at", "pgd_at,fast"):
    yield f"quickstart_methods:{m}", quickstart_methods.get_config(m)


@pytest.mark.parametrize("name,c", list(_shipped_rift_configs()))
def test_shipped_configs_run_rift_as_the_authors_did(name, c):
  """At least the official 200 MRC ascent steps a module (10,000 examples
  in batches of 512 over 10 passes), and the lowest-MRC 3×3 block
  convolution as the fine-tuned module."""
  m = c.rift.mrc
  steps = int(m.num_passes) * -(-int(m.num_examples) // int(m.batch_size))
  assert steps >= 200, (name, steps)
  assert c.rift.finetune.candidates == "conv3x3", name


def test_smoke_variant_is_small_and_valid():
  c = quickstart.get_config("smoke")
  validation.validate_rift(c)
  assert c.data.source == "debian" and c.rift.ood.enabled   # the demo's path
  with pytest.raises(ValueError, match="quickstart.py:smoke"):
    quickstart.get_config("tiny")

"""Model shapes and the paper's module names."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import models
from rift_jax.errors import UserError


def _abstract_params(name, width, shape, classes=10):
  model = models.create_model(name, num_classes=classes, width=width)
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                        jnp.zeros((1, *shape)), train=False))
  return v["params"]


def test_resnet18_module_names_follow_the_paper():
  names = list(models.perturbable_modules(_abstract_params("resnet18", 8, (32, 32, 3))))
  assert names[0] == "conv1" and names[-1] == "linear"
  for n in ("layer2.1.conv2", "layer4.1.conv1", "layer2.0.shortcut.0",
            "layer3.0.shortcut.0", "layer4.0.shortcut.0"):
    assert n in names
  assert "layer1.0.shortcut.0" not in names  # same width, stride 1: identity
  # 1 stem + 8 blocks × 2 convs + 3 projections + linear
  assert len(names) == 1 + 16 + 3 + 1


def test_resnet34_and_wrn_names():
  r34 = models.perturbable_modules(_abstract_params("resnet34", 4, (32, 32, 3)))
  assert "layer2.3.conv2" in r34 and "layer3.5.conv2" in r34
  wrn = models.perturbable_modules(_abstract_params("wrn34_10", None, (32, 32, 3)))
  assert "block1.layer.3.conv2" in wrn and "block1.layer.2.conv2" in wrn
  assert "block2.layer.0.convShortcut" in wrn and list(wrn)[-1] == "fc"
  assert list(wrn)[0] == "conv1"


def test_wrn34_10_has_the_published_parameter_count():
  p = _abstract_params("wrn34_10", None, (32, 32, 3))
  n = sum(int(np.prod(l.shape)) for l in jax.tree_util.tree_leaves(p))
  assert abs(n - 46.16e6) < 0.01e6  # 46.16M, as in the TRADES / RobustBench model


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18"])
def test_forward_shapes_and_train_mode_stats(name):
  model = models.create_model(name, num_classes=7, width=4, mean=(0.5,), std=(0.25,))
  v = models.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 28, 28, 1))
  fns = models.ModelFns(model)
  assert jax.jit(fns.logits)(v, x).shape == (3, 7)
  _, stats = jax.jit(fns.logits_and_stats)(v, x)
  moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                 stats, v["batch_stats"])
  assert all(jax.tree_util.tree_leaves(moved))


def test_module_mask_and_unknown_module():
  p = _abstract_params("resnet18", 4, (32, 32, 3))
  mask = models.module_mask(p, ["layer2.1.conv2"])
  assert sum(jax.tree_util.tree_leaves(mask)) == 1
  assert mask["layer2_1"]["conv2"]["kernel"]
  with pytest.raises(UserError, match=r"module 'layer9.conv1' does not exist; valid"):
    models.resolve_modules(p, ["layer9.conv1"])
  assert models.resolve_modules(p, r"layer4\..*conv1") == ["layer4.0.conv1",
                                                           "layer4.1.conv1"]


def test_unknown_model_name():
  with pytest.raises(UserError, match=r"model.name='vgg'.*'resnet18'"):
    models.create_model("vgg", num_classes=10)

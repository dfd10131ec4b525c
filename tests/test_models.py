"""Model shapes and the paper's module names."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import models
from rift_jax.models import zoo
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
  for bad in ("dm_wrn30_10", "wrn28_0", "wrn4_1", "dm_preact_resnet50"):
    with pytest.raises(UserError, match=rf"model.name='{bad}' is not allowed;"
                       r".*or wrn<depth>_<k> / dm_wrn<depth>_<k>"):
      models.create_model(bad, num_classes=10)
  m = models.create_model("dm_wrn46_3", num_classes=10)
  assert isinstance(m, models.DMWideResNet) and (m.depth, m.widen_factor) == (46, 3)
  m = models.create_model("wrn28_10", num_classes=10)
  assert isinstance(m, models.WideResNet) and (m.depth, m.widen_factor) == (28, 10)


def test_flax_names_read_back_as_pytorch_names():
  # Single '_' is PyTorch's '.', a doubled '__' a literal '_'.
  for torch_name, flax_name in [("layer2.1", "layer2_1"), ("shortcut.0", "shortcut_0"),
                                ("convShortcut", "convShortcut"),
                                ("batchnorm_0", "batchnorm__0"),
                                ("layer_0.1", "layer__0_1"),
                                ("conv_2d_1", "conv__2d__1"), ("init_conv", "init__conv")]:
    assert models.flax_name(torch_name) == flax_name
    assert models.path_to_name([flax_name]) == torch_name
  assert models.path_to_name(("layer_0", "block_11", "batchnorm__1")) == \
      "layer.0.block.11.batchnorm_1"


def test_deepmind_wrn_names_follow_robustbench():
  p = _abstract_params("dm_wrn28_10", None, (32, 32, 3))
  names = list(models.perturbable_modules(p))
  # stem, 3 groups x 4 blocks x 2 convs, 3 projections (width changes), head
  assert len(names) == 1 + 24 + 3 + 1
  assert names[:4] == ["init_conv", "layer.0.block.0.conv_0",
                       "layer.0.block.0.conv_1", "layer.0.block.0.shortcut"]
  assert names[-2:] == ["layer.2.block.3.conv_1", "logits"]
  assert "layer.1.block.1.shortcut" not in names
  assert p["layer_0"]["block_0"]["batchnorm__0"]["scale"].shape == (16,)
  assert p["layer_2"]["block_0"]["shortcut"]["kernel"].shape == (1, 1, 320, 640)
  mask = models.module_mask(p, ["layer.1.block.2.conv_0"])
  assert sum(jax.tree_util.tree_leaves(mask)) == 1
  assert mask["layer_1"]["block_2"]["conv__0"]["kernel"]
  assert models.resolve_modules(p, r"layer\.2\..*shortcut") == [
      "layer.2.block.0.shortcut"]
  # WRN-70-16: numbers compare as numbers (block 10 after block 9).
  deep = list(models.perturbable_modules(_abstract_params("dm_wrn70_16", 1, (32, 32, 3))))
  i = deep.index("layer.0.block.9.conv_1")
  assert deep[i + 1] == "layer.0.block.10.conv_0" and deep[-1] == "logits"


def test_deepmind_preact_names_follow_robustbench():
  p = _abstract_params("dm_preact_resnet18", None, (32, 32, 3))
  names = list(models.perturbable_modules(p))
  assert len(names) == 1 + 16 + 3 + 1
  assert names[:4] == ["conv_2d", "layer_0.0.conv_2d_1", "layer_0.0.conv_2d_2",
                       "layer_0.1.conv_2d_1"]
  assert names[-1] == "logits" and "layer_0.0.shortcut" not in names
  for k in (1, 2, 3):  # 3x3 projections where the stage starts
    assert f"layer_{k}.0.shortcut" in names
  assert p["layer__3_0"]["shortcut"]["kernel"].shape == (3, 3, 256, 512)


def test_same_padded_conv_matches_tf_same_and_its_gradient_every_impl():
  # RobustBench's DeepMind blocks pad by hand (0 top/left, 1 bottom/right at
  # stride 2) and convolve unpadded: TensorFlow's 'SAME' for even sizes. The
  # 'phase' input gradient then runs with padding 0, on odd sizes too.
  for stride, size in ((2, 16), (2, 15), (1, 9)):
    x = jax.random.normal(jax.random.PRNGKey(stride + size), (2, size, size, 3))
    outs, grads = [], []
    for impl in ("phase", "xla"):
      layer = zoo._SameConv(4, stride, impl)
      v = layer.init(jax.random.PRNGKey(0), x)
      outs.append(np.asarray(layer.apply(v, x)))
      grads.append(np.asarray(jax.grad(
          lambda x, v=v, layer=layer: jnp.sum(jnp.sin(layer.apply(v, x))))(x)))
    k = v["params"]["kernel"]
    pad = ((1, 1), (1, 1)) if stride == 1 else ((0, 1), (0, 1))
    want = jax.lax.conv_general_dilated(x, k, (stride, stride), pad,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(outs[0], want, atol=1e-5, rtol=0)
    if size % 2 == 0 or stride == 1:  # the same as TensorFlow's 'SAME'
      same = jax.lax.conv_general_dilated(x, k, (stride, stride), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
      np.testing.assert_allclose(outs[0], same, atol=1e-5, rtol=0)
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-5, rtol=0)
    assert np.abs(grads[1]).max() > 0.1

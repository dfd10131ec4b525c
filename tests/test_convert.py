"""PyTorch checkpoint import/export: logits agree with the PyTorch models,
files come back in their own layout, bad files get one clear line."""
from __future__ import annotations

import collections

import jax
import numpy as np
import pytest

from rift_jax import models
from rift_jax.models import convert
from rift_jax.errors import UserError

torch = pytest.importorskip(
    "torch", reason="torch is not installed (pip install .[torch]); the "
    "PyTorch cross-checks need it")
from rift_jax.models import torch_models  # noqa: E402
from tests.conftest import randomize_bn  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
# (our name, width, input shape); small widths, the real depths where cheap.
CASES = [("resnet18", 4, (32, 32, 3)), ("resnet34", 2, (32, 32, 3)),
         ("preact_resnet18", 4, (28, 28, 1)), ("wrn34_10", 1, (32, 32, 3)),
         ("wong_preact_resnet18", 4, (32, 32, 3)),
         # DeepMind WRN-16-2 (identity and projection blocks) and WRN-10-1
         # (no projection in the first group) on 28x28 (14 -> 7 after the
         # stride-2 SAME padding); DeepMind PreAct ResNet-18.
         ("dm_wrn16_2", 4, (32, 32, 3)), ("dm_wrn10_1", 4, (28, 28, 1)),
         ("dm_preact_resnet18", 4, (32, 32, 3))]


def _pair(name, width, shape, seed=0, **kw):
  torch.manual_seed(seed)
  c = shape[-1]
  mean, std = (MEAN, STD) if c == 3 else ((0.3,), (0.35,))
  tm = torch_models.build(name, num_classes=10, width=width, in_channels=c,
                             mean=mean, std=std, **kw)
  randomize_bn(tm, seed)
  tm.eval()
  model = models.create_model(name, num_classes=10, width=width, mean=mean,
                              std=std)
  return tm, model


def _torch_logits(tm, x):
  with torch.no_grad():
    return tm(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2))).numpy()


def _x(shape, n=4, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


@pytest.mark.parametrize("name,width,shape", CASES)
def test_import_matches_pytorch_logits_and_export_round_trips(name, width, shape):
  tm, model = _pair(name, width, shape)
  target = convert.variable_shapes(model, shape)
  variables = convert.from_state_dict(tm.state_dict(), target)
  x = _x(shape)
  ours = np.asarray(jax.jit(model.apply)(variables, x))
  ref = _torch_logits(tm, x)
  assert np.abs(ref).max() > 0.1  # not a degenerate all-zero comparison
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
  # Export -> strict load into a fresh PyTorch model -> same logits.
  fresh, _ = _pair(name, width, shape, seed=5)
  fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                         convert.to_state_dict(variables).items()}, strict=True)
  fresh.eval()
  np.testing.assert_allclose(_torch_logits(fresh, x), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["dm_wrn28_10", "dm_preact_resnet18"])
def test_full_size_deepmind_names_and_shapes_equal_the_reference(name):
  # At the published sizes (RobustBench: Gowal2020Uncovering_28_10_extra,
  # Rebuffi2021Fixing_R18_ddpm) every state_dict key and shape agrees.
  tm = torch_models.build(name, num_classes=10)
  theirs = {k: tuple(v.shape) for k, v in tm.state_dict().items()
            if not k.endswith("num_batches_tracked")}
  model = models.create_model(name, num_classes=10)
  assert convert.expected_shapes(convert.variable_shapes(model, (32, 32, 3))) \
      == theirs
  if name == "dm_wrn28_10":  # WRN-28-10: 36.5M (Zagoruyko & Komodakis 2016)
    assert sum(p.numel() for p in tm.parameters()) == 36_479_194


def _dm_file(persistent_stats=True):
  name, width, shape = "dm_wrn10_1", 4, (32, 32, 3)
  tm, model = _pair(name, width, shape, persistent_stats=persistent_stats)
  return tm, model, shape


def _scaled(variables, factor=1.5):
  """New weights, so a writer that copies the source file's values fails."""
  return jax.tree_util.tree_map(lambda a: a * factor, variables)


def test_export_like_dataparallel_wrapper_pth_round_trip(tmp_path):
  # A DeepMind WRN saved from nn.DataParallel inside a training checkpoint,
  # with RobustBench's (Jan 2022) persistent mean/std buffers.
  tm, model, shape = _dm_file()
  parallel = torch.nn.DataParallel(tm)
  sd = parallel.state_dict()
  assert "module.mean" in sd and "module.init_conv.weight" in sd
  opt = {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": []}
  torch.save({"epoch": 7, "state_dict": sd, "optimizer": opt,
              "best_acc": torch.tensor(61.5)}, tmp_path / "src.pth")
  variables, layout = convert.import_with_layout(str(tmp_path / "src.pth"),
                                                 model, shape)
  assert layout.wrapper == ("state_dict",) and layout.prefix == "module."
  assert layout.keys == tuple(sd)
  assert int(layout.extras["module.layer.0.block.0.batchnorm_0."
                           "num_batches_tracked"]) == 7
  new = _scaled(variables)
  convert.export_like(new, layout, str(tmp_path / "out.pth"))
  out = torch.load(tmp_path / "out.pth", weights_only=True)
  assert list(out) == ["epoch", "state_dict", "optimizer", "best_acc"]
  assert out["epoch"] == 7 and float(out["best_acc"]) == 61.5
  assert list(out["state_dict"]) == list(sd)  # same keys, same order
  for k, v in sd.items():
    assert out["state_dict"][k].dtype == v.dtype, k
  torch.testing.assert_close(out["state_dict"]["module.mean"], sd["module.mean"])
  # The user's code, unchanged: strict load into a DataParallel model.
  fresh, _ = _pair("dm_wrn10_1", 4, shape, seed=3, persistent_stats=True)
  torch.nn.DataParallel(fresh).load_state_dict(out["state_dict"], strict=True)
  fresh.eval()
  x = _x(shape)
  np.testing.assert_allclose(_torch_logits(fresh, x),
                             np.asarray(jax.jit(model.apply)(new, x)),
                             atol=1e-4, rtol=0)
  # The layout can also be given as the source path.
  convert.export_like(new, str(tmp_path / "src.pth"), str(tmp_path / "b.pth"))
  again = torch.load(tmp_path / "b.pth", weights_only=True)["state_dict"]
  for k in sd:
    torch.testing.assert_close(again[k], out["state_dict"][k])


def test_export_like_safetensors_and_dtypes(tmp_path):
  from safetensors import safe_open
  from safetensors.torch import save_file
  tm, model, shape = _dm_file()
  sd = {k: v.half() if v.is_floating_point() else v
        for k, v in tm.state_dict().items()}  # an fp16 file with mean/std
  save_file(sd, str(tmp_path / "src.safetensors"), metadata={"note": "x"})
  variables, layout = convert.import_with_layout(
      str(tmp_path / "src.safetensors"), model, shape)
  assert layout.dtypes["init_conv.weight"] == "float16"
  new = _scaled(variables, 0.5)
  for suffix in ("safetensors", "pth"):
    path = str(tmp_path / f"out.{suffix}")
    convert.export_like(new, layout, path)
    if suffix == "safetensors":
      with safe_open(path, "pt") as f:
        assert f.metadata() == {"note": "x"}
        out = {k: f.get_tensor(k) for k in f.keys()}
    else:
      out = torch.load(path, weights_only=True)
    assert set(out) == set(sd)
    assert all(out[k].dtype == sd[k].dtype for k in sd)
    assert int(out["layer.1.block.0.batchnorm_1.num_batches_tracked"]) == 7
    torch.testing.assert_close(out["std"], sd["std"])
    fresh, _ = _pair("dm_wrn10_1", 4, shape, seed=4, persistent_stats=True)
    fresh.load_state_dict(out, strict=True)  # loads fp16 into fp32 params
    fresh.eval()
    x = _x(shape)
    want = np.asarray(jax.jit(model.apply)(
        convert.from_state_dict(out, convert.variable_shapes(model, shape)), x))
    np.testing.assert_allclose(_torch_logits(fresh, x), want, atol=1e-4, rtol=0)
    # The fp16 rounding of the scaled weights, nothing else, was lost.
    k = np.asarray(new["params"]["logits"]["kernel"]).T
    np.testing.assert_allclose(out["logits.weight"].float().numpy(), k,
                               rtol=1e-3, atol=1e-4)


def test_export_without_source_and_layout_mismatch(tmp_path):
  tm, model, shape = _dm_file(persistent_stats=False)
  variables = convert.from_state_dict(tm.state_dict(),
                                      convert.variable_shapes(model, shape))
  convert.export_like(variables, None, str(tmp_path / "ours.pth"))
  out = torch.load(tmp_path / "ours.pth", weights_only=True)
  assert sorted(out) == sorted(tm.state_dict())
  tm.load_state_dict(out, strict=True)
  # A layout from another architecture: one line naming the key.
  other, _ = _pair("dm_preact_resnet18", 4, (32, 32, 3))
  torch.save(other.state_dict(), tmp_path / "other.pth")
  with pytest.raises(UserError, match=r"cannot write in the layout of .*"
                     r"other\.pth.*: it holds conv_2d\.weight but the "
                     r"variables have no conv_2d\.weight"):
    convert.export_like(variables, str(tmp_path / "other.pth"),
                        str(tmp_path / "x.pth"))


def test_normalisation_buffers_must_match_the_model(tmp_path):
  tm, _, shape = _dm_file()
  torch.save(tm.state_dict(), tmp_path / "dm.pth")
  plain = models.create_model("dm_wrn10_1", num_classes=10, width=4)
  with pytest.raises(UserError, match=r"normalises inputs inside with mean="
                     r"\(0\.49, 0\.48, 0\.45\) but the model is built with "
                     r"mean=\(0\.0,\)"):
    convert.import_checkpoint(str(tmp_path / "dm.pth"), plain, shape)


def test_files_prefixes_wrappers_and_errors(tmp_path):
  name, width, shape = "wrn34_10", 1, (32, 32, 3)
  torch.manual_seed(0)
  tm = torch_models.WRN34_10(num_classes=10, width=width, mean=MEAN, std=STD,
                                sub_block1=True)  # TRADES' unused block
  randomize_bn(tm, 1)
  tm.eval()
  model = models.create_model(name, num_classes=10, width=width, mean=MEAN,
                              std=STD)
  x = _x(shape, 4, 1)  # the batch of the cases above: a cached compile
  ref = _torch_logits(tm, x)
  wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in
                                        tm.state_dict().items()}}
  torch.save(wrapped, tmp_path / "ckpt.pth")
  v, layout = convert.import_with_layout(str(tmp_path / "ckpt.pth"), model,
                                         shape)
  np.testing.assert_allclose(np.asarray(jax.jit(model.apply)(v, x)), ref,
                             atol=1e-4, rtol=0)
  # TRADES' sub_block1 is kept in the layout and written back.
  assert "module.sub_block1.layer.0.conv1.weight" in layout.extras
  convert.export_like(v, layout, str(tmp_path / "same.pth"))
  tm.load_state_dict({k[len("module."):]: t for k, t in torch.load(
      tmp_path / "same.pth", weights_only=True)["state_dict"].items()},
                     strict=True)
  # safetensors round trip in our naming needs no torch.
  convert.export_checkpoint(v, str(tmp_path / "w.safetensors"))
  v2 = convert.import_checkpoint(str(tmp_path / "w.safetensors"), model, shape)
  jax.tree_util.tree_map(np.testing.assert_array_equal, v, v2)
  with pytest.raises(UserError, match="does not exist"):
    convert.load_state_dict(str(tmp_path / "nope.pth"))
  with pytest.raises(UserError, match="unknown suffix"):
    convert.load_state_dict(__file__)


def _one_line(e):
  assert "\n" not in str(e.value)
  return str(e.value)


def test_bad_files_name_the_key_and_the_architecture_that_fits(tmp_path):
  # A WRN-34-1 (width 1) file offered to a ResNet-18: keys differ.
  torch.manual_seed(0)
  wrn = torch_models.WRN34_10(num_classes=10, width=1).state_dict()
  target = convert.variable_shapes(
      models.create_model("resnet18", num_classes=10, width=4), (32, 32, 3))
  with pytest.raises(UserError) as e:
    convert.from_state_dict(wrn, target)
  assert _one_line(e).startswith(
      "state_dict does not fit this model: missing key "
      "layer1.0.bn1.running_mean (+")
  assert "unexpected key block1.layer.0.bn1.weight (+" in str(e.value)
  assert str(e.value).endswith(
      "the checkpoint fits model.name='wrn34_10' (width 1, 10 classes)")
  # Right names, wrong width: the first shape mismatch, in file order.
  tm, _ = _pair("dm_wrn16_2", 4, (32, 32, 3))
  target = convert.variable_shapes(
      models.create_model("dm_wrn16_2", num_classes=10, width=8), (32, 32, 3))
  with pytest.raises(UserError) as e:
    convert.from_state_dict(tm.state_dict(), target)
  assert _one_line(e) == (
      "state_dict does not fit this model: init_conv.weight has shape "
      "(4, 3, 3, 3) in the checkpoint but the model needs (8, 3, 3, 3); the "
      "checkpoint fits model.name='dm_wrn16_2' (width 4, 10 classes)")
  # RobustBench's two PreAct ResNet-18s differ by the final BN only.
  wong, _ = _pair("wong_preact_resnet18", 4, (32, 32, 3))
  target = convert.variable_shapes(
      models.create_model("preact_resnet18", num_classes=10, width=4),
      (32, 32, 3))
  with pytest.raises(UserError, match=r"missing key bn\.running_mean \(\+3 "
                     r"more\); the checkpoint fits model\.name='wong_preact_resnet18'"
                     r" \(width 4, 10 classes\)$"):
    convert.from_state_dict(wong.state_dict(), target)
  # The same from a DataParallel file: the line starts with the file.
  path = str(tmp_path / "wong.pth")
  torch.save({"net": torch.nn.DataParallel(wong).state_dict()}, path)
  with pytest.raises(UserError) as e:
    convert.import_checkpoint(path, models.create_model(
        "preact_resnet18", num_classes=10, width=4), (32, 32, 3))
  assert _one_line(e).startswith(f"{path!r} does not fit this model: missing "
                                 "key bn.running_mean (+3 more); the "
                                 "checkpoint fits model.name='wong_preact")
  # A head with 100 classes; something no architecture has.
  sd = dict(tm.state_dict())
  sd["logits.weight"] = torch.zeros(100, 32)
  sd["logits.bias"] = torch.zeros(100)
  with pytest.raises(UserError, match=r"logits\.weight has shape \(100, 32\).*"
                     r"\(10, 32\); the checkpoint fits model\.name='dm_wrn16_2' "
                     r"\(width 4, 100 classes\)$"):
    convert.from_state_dict(sd, convert.variable_shapes(
        models.create_model("dm_wrn16_2", num_classes=10, width=4), (32, 32, 3)))
  with pytest.raises(UserError, match=r"unexpected key head\.weight; no "
                     r"built-in architecture fits it \(model names: resnet18"):
    convert.from_state_dict(collections.OrderedDict(
        {**tm.state_dict(), "head.weight": torch.zeros(3)}), convert.
        variable_shapes(models.create_model("dm_wrn16_2", num_classes=10,
                                            width=4), (32, 32, 3)))

"""PyTorch checkpoint import/export: logits agree with the PyTorch models."""
import jax
import numpy as np
import pytest

from rift_jax import convert, models
from rift_jax.errors import UserError

torch = pytest.importorskip(
    "torch", reason="torch is not installed (pip install .[torch]); the "
    "PyTorch cross-checks need it")
from tests import torch_reference  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
# (our name, width, input shape); small widths, the real depths.
CASES = [("resnet18", 4, (32, 32, 3)), ("resnet34", 2, (32, 32, 3)),
         ("preact_resnet18", 4, (28, 28, 1)), ("wrn34_10", 1, (32, 32, 3))]


def _pair(name, width, shape, seed=0):
  torch.manual_seed(seed)
  c = shape[-1]
  mean, std = (MEAN, STD) if c == 3 else ((0.3,), (0.35,))
  tm = torch_reference.BUILDERS[name](num_classes=10, width=width,
                                     in_channels=c, mean=mean, std=std)
  torch_reference.randomize_bn(tm, seed)
  tm.eval()
  model = models.create_model(name, num_classes=10, width=width, mean=mean,
                              std=std)
  return tm, model


def _torch_logits(tm, x):
  with torch.no_grad():
    return tm(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2))).numpy()


@pytest.mark.parametrize("name,width,shape", CASES)
def test_import_matches_pytorch_logits_and_export_round_trips(name, width, shape):
  tm, model = _pair(name, width, shape)
  target = convert.variable_shapes(model, shape)
  variables = convert.from_state_dict(tm.state_dict(), target)
  x = np.random.default_rng(0).uniform(0, 1, (4, *shape)).astype(np.float32)
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


def test_files_prefixes_wrappers_and_errors(tmp_path):
  name, width, shape = "wrn34_10", 1, (32, 32, 3)
  torch.manual_seed(0)
  tm = torch_reference.WRN34_10(num_classes=10, width=width, mean=MEAN, std=STD,
                                sub_block1=True)  # TRADES' unused block
  torch_reference.randomize_bn(tm, 1)
  tm.eval()
  model = models.create_model(name, num_classes=10, width=width, mean=MEAN,
                              std=STD)
  x = np.random.default_rng(1).uniform(0, 1, (2, *shape)).astype(np.float32)
  ref = _torch_logits(tm, x)
  wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in
                                        tm.state_dict().items()}}
  torch.save(wrapped, tmp_path / "ckpt.pth")
  v = convert.import_checkpoint(str(tmp_path / "ckpt.pth"), model, shape)
  np.testing.assert_allclose(np.asarray(jax.jit(model.apply)(v, x)), ref,
                             atol=1e-4, rtol=0)
  # safetensors round trip needs no torch.
  convert.export_checkpoint(v, str(tmp_path / "w.safetensors"))
  v2 = convert.import_checkpoint(str(tmp_path / "w.safetensors"), model, shape)
  jax.tree_util.tree_map(np.testing.assert_array_equal, v, v2)
  # A partial or foreign state_dict: one error naming the keys.
  target = convert.variable_shapes(model, shape)
  partial = {k: v for k, v in tm.state_dict().items() if "block3" not in k}
  partial["head.weight"] = torch.zeros(3)
  with pytest.raises(UserError, match=r"missing keys: block3\.layer\.0\..*"
                     r"\(\+\d+ more\); unexpected keys: head\.weight$"):
    convert.from_state_dict(partial, target)
  bad = dict(tm.state_dict())
  bad["fc.weight"] = torch.zeros(7, 40)
  with pytest.raises(UserError, match=r"fc\.weight has shape \(7, 40\).*\(10, 40\)"):
    convert.from_state_dict(bad, target)
  with pytest.raises(UserError, match="does not exist"):
    convert.load_state_dict(str(tmp_path / "nope.pth"))
  with pytest.raises(UserError, match="unknown suffix"):
    convert.load_state_dict(__file__)

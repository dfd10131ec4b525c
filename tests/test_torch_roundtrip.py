"""RiFT on a user's PyTorch model: a state_dict file in, θ* out in the same
key layout, loadable with strict=True, logits equal to ours."""
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip "
                            "install .[torch]); the round trips need it")

from rift_jax import data, models  # noqa: E402
from rift_jax.experiments import pipeline  # noqa: E402
from rift_jax.models import checkpoint, torch_models  # noqa: E402
from rift_jax.rift import interpolation  # noqa: E402
from tests.conftest import randomize_bn, run_cli  # noqa: E402
from tests.configs import tiny  # noqa: E402

INFO = data.INFO["synthetic"]   # 16x16x1, 4 classes


def _user_model(seed=0, mean=INFO.mean, std=INFO.std):
  torch.manual_seed(seed)
  tm = torch_models.ResNet18(num_classes=4, width=2, in_channels=1, mean=mean,
                             std=std)
  randomize_bn(tm, seed)
  return tm.eval()


def _config(path, **kw):
  c = tiny.get_config()
  c.unlock()
  c.model.name, c.model.width = "resnet18", 2
  c.rift.at_checkpoint = str(path)
  for k, v in kw.items():
    node = c
    *p, leaf = k.split(".")
    for q in p:
      node = node[q]
    node[leaf] = v
  return c


def _save(tm, path, how):
  sd = tm.state_dict()
  if how == "dataparallel_wrapper":
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()},
                "epoch": 99, "best_acc": torch.tensor(51.2)}, path)
  elif how == "wrapper":
    torch.save({"state_dict": sd}, path)
  elif how == "dataparallel":
    torch.save({"module." + k: v for k, v in sd.items()}, path)
  else:
    from safetensors.torch import save_file
    save_file(dict(sd), path)


def _logits_torch(tm, x):
  with torch.no_grad():
    return tm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize("how,suffix", [("dataparallel_wrapper", ".pth"),
                                        ("wrapper", ".pth"),
                                        ("dataparallel", ".pt"),
                                        ("plain", ".safetensors")])
def test_export_keeps_the_source_layout(tmp_path, how, suffix):
  """θ* written by the pipeline's export stage loads strictly into the
  user's model, whatever the source file's wrapper and prefix were."""
  tm = _user_model()
  src = tmp_path / f"user{suffix}"
  _save(tm, src, how)
  config = _config(src)
  model = models.build_model(config, INFO)
  theta, _ = checkpoint.load_model_variables(str(src), model, INFO)
  x = np.random.default_rng(0).uniform(0, 1, (8, 16, 16, 1)).astype(np.float32)
  fns = models.ModelFns(model)
  np.testing.assert_allclose(np.asarray(fns.logits(theta, x)), _logits_torch(tm, x),
                             atol=1e-4)
  star = interpolation.mix(theta, jax.tree_util.tree_map(lambda a: a * 1.1, theta),
                           0.5)
  pipeline.stage_export(str(tmp_path), {"theta_star": star}, str(src))
  ours = np.asarray(fns.logits(star, x))
  for out in ("theta_star.pth", "theta_star.safetensors"):
    back = _user_model(seed=1)   # other weights: everything must be loaded
    if out.endswith(".pth"):
      obj = torch.load(tmp_path / out, weights_only=True)
    else:
      from safetensors.torch import load_file
      obj = load_file(tmp_path / out)
    if out.endswith(".pth") and "wrapper" in how:
      assert set(obj) >= {"state_dict"}
      obj = obj["state_dict"]
    if "dataparallel" in how:
      assert all(k.startswith("module.") for k in obj)
      obj = {k[len("module."):]: v for k, v in obj.items()}
    back.load_state_dict(obj, strict=True)
    np.testing.assert_allclose(_logits_torch(back.eval(), x), ours, atol=1e-4)


def test_input_normalization_none_takes_unit_range_inputs(tmp_path):
  tm = _user_model(mean=(0.0,), std=(1.0,))  # a RobustBench-style [0, 1] model
  src = tmp_path / "rb.safetensors"
  _save(tm, src, "plain")
  x = np.random.default_rng(1).uniform(0, 1, (8, 16, 16, 1)).astype(np.float32)
  for norm, close in (("none", True), ("dataset", False)):
    config = _config(src, **{"model.input_normalization": norm})
    model = models.build_model(config, INFO)
    theta, _ = checkpoint.load_model_variables(str(src), model, INFO)
    ours = np.asarray(models.ModelFns(model).logits(theta, x))
    assert np.allclose(ours, _logits_torch(tm, x), atol=1e-4) == close, norm


# Out of `make test` (`make test-slow`): a whole launch/rift run; CI's smoke
# demo runs the pipeline and the tests above the file conversion.
@pytest.mark.slow
def test_launch_rift_from_a_pytorch_file(tmp_path):
  """The whole pipeline from a DataParallel-wrapped .pth: θ*.pth loads
  strictly into the user's model and gives our θ*'s logits."""
  tm = _user_model()
  src = tmp_path / "user.pth"
  _save(tm, src, "dataparallel_wrapper")
  wd = tmp_path / "rift"
  proc = run_cli("launch.rift", "--config=tests/configs/tiny.py", f"--workdir={wd}",
                 "--config.model.name=resnet18", "--config.model.width=2",
                 f"--config.rift.at_checkpoint={src}",
                 "--config.rift.mrc.include=layer4.*",
                 "--config.rift.ood.enabled=False", timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  obj = torch.load(wd / "theta_star.pth", weights_only=True)
  assert obj["epoch"] == 99   # the wrapper's other entries come back
  back = _user_model(seed=3)
  back.load_state_dict({k[len("module."):]: v for k, v in obj["state_dict"].items()},
                       strict=True)
  config = _config(src)
  model = models.build_model(config, INFO)
  star, _ = checkpoint.load_model_variables(str(wd / "theta_star.safetensors"),
                                            model, INFO)
  x = np.random.default_rng(2).uniform(0, 1, (8, 16, 16, 1)).astype(np.float32)
  np.testing.assert_allclose(_logits_torch(back.eval(), x),
                             np.asarray(models.ModelFns(model).logits(star, x)),
                             atol=1e-4)


def test_mismatching_file_is_one_line(tmp_path):
  src = tmp_path / "wrong.pth"
  torch.save(torch_models.ResNet18(num_classes=4, width=4, in_channels=1)
             .state_dict(), src)
  from tests.test_cli import _one_error_line
  line = _one_error_line(run_cli(
      "launch.rift", "--config=tests/configs/tiny.py", f"--workdir={tmp_path}/w",
      "--config.model.name=resnet18", "--config.model.width=2",
      f"--config.rift.at_checkpoint={src}"))
  assert "conv1.weight" in line and "width 4" in line
  assert not os.path.exists(tmp_path / "w")   # checked before any work

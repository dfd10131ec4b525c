"""Bad input on the command line: one clear line, exit code 2, nothing written."""
import os

import pytest

from tests.conftest import run_cli, subprocess_env

TINY = "--config=tests/configs/tiny.py"


def _one_error_line(proc):
  lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error: ")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  return lines[0]


@pytest.mark.parametrize("args,expect", [
    (["--config.optim.lrr=0.1"],
     "unknown key 'optim.lrr' in --config.optim.lrr; did you mean 'optim.lr'?"),
    (["--config.data.name=imagenet"], "data.name='imagenet' is not allowed"),
    (["--config.model.name=vgg"], "model.name='vgg' is not allowed"),
    (["--config.attack.epsilon=0.0"], "attack.epsilon=0.0 is outside"),
    (["--config.attack.num_steps=0"], "attack.num_steps=0 is outside"),
    (["--config.method=fgsm"], "method='fgsm' is not allowed"),
    (["--config.optim.lr=abc"], "abc"),
])
def test_train_bad_config(tmp_path, args, expect):
  proc = run_cli("launch.train", TINY, f"--workdir={tmp_path}/w", *args)
  assert expect in _one_error_line(proc)
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_train_unwritable_workdir_and_missing_data(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  line = _one_error_line(run_cli("launch.train", TINY, f"--workdir={blocker}/sub"))
  assert "is not writable" in line
  line = _one_error_line(run_cli(
      "launch.train", "--config=configs/quickstart.py", f"--workdir={tmp_path}/w",
      f"--config.data.debian_dir={tmp_path}/none",
      f"--config.data.data_dir={tmp_path}/tfds"))
  assert "dataset-fashion-mnist" in line


@pytest.mark.parametrize("args,expect", [
    (["--config.rift.finetune.target=modules",
      "--config.rift.finetune.modules=('layer9.conv1',)"],
     "module 'layer9.conv1' does not exist; valid modules: conv1, conv2, conv3, linear"),
    (["--config.rift.alphas=()"], "rift.alphas is empty"),
    (["--config.rift.alphas=(0.0,1.5)"], "1.5"),
    (["--config.rift.tolerance=-0.5"], "rift.tolerance=-0.5"),
    (["--config.rift.at_checkpoint=/nonexistent/ckpt"], "/nonexistent/ckpt"),
    (["--config.rift.ood.corruptions=snowstorm"], "snowstorm"),
    # A bad value in the last block fails before θ_AT is trained.
    (["--config.rift.mrc.epsilon=-1"], "rift.mrc.epsilon=-1.0 is outside"),
    (["--config.rift.test_attack.restarts=0"], "rift.test_attack.restarts=0"),
])
def test_rift_bad_input(tmp_path, args, expect):
  proc = run_cli("launch.rift", TINY, f"--workdir={tmp_path}/w", *args)
  assert expect in _one_error_line(proc)
  assert not os.path.exists(tmp_path / "w")  # nothing written, nothing trained


def test_rift_missing_package_fails_in_the_first_second(tmp_path):
  """A package the run would import only at its end (the θ* export's
  safetensors) is checked before any work: one line naming it and how to
  install it, exit 2, nothing written."""
  import subprocess
  import sys

  from tests.conftest import REPO
  code = ("import sys, runpy; sys.modules['safetensors.numpy'] = None; "
          "sys.argv = ['launch.rift'] + sys.argv[1:]; "
          "runpy.run_module('launch.rift', run_name='__main__', alter_sys=True)")
  proc = subprocess.run(
      [sys.executable, "-c", code, TINY, f"--workdir={tmp_path}/w"], cwd=REPO,
      env=subprocess_env(),
      capture_output=True, text=True, timeout=300)
  line = _one_error_line(proc)
  assert "'safetensors'" in line and "theta_star.safetensors" in line
  assert "make install" in line
  assert not os.path.exists(tmp_path / "w")

"""launch/evaluate.py end to end (two CLI runs): a PyTorch .safetensors
checkpoint written by rift_jax.models.convert, the quickstart config (Fashion-MNIST,
ResNet-18 width 4) through configs/evaluate.py:quickstart, a suite with
spaces in it, PGD and APGD-CE, generated OOD; the outputs agree with each
other and with the model evaluated here; a bad suite entry is one line and
exit code 2."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import FIXTURE, FMNIST_DIR, run_cli

ARGS = ["--config=configs/evaluate.py:quickstart", "--config.model.width=4",
        "--config.evaluate.num_examples=64", "--config.evaluate.batch_size=32",
        "--config.evaluate.apgd.num_steps=2", "--config.evaluate.pgd.num_steps=2",
        "--config.evaluate.pgd.restarts=1",
        "--config.evaluate.ood.corruptions=contrast",
        "--config.evaluate.ood.severities=(1,)",
        "--config.evaluate.ood.max_images=16"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """The committed robust ResNet-18 (width 4), with class 0's bias raised by
  0.1 so the file differs from the fixture, written as a PyTorch
  .safetensors by `convert.export_checkpoint`. -> (path, variables, config)."""
  if not os.path.exists(os.path.join(FMNIST_DIR, "t10k-images-idx3-ubyte.gz")):
    pytest.skip(f"Fashion-MNIST not found in {FMNIST_DIR} "
                "(apt-get install dataset-fashion-mnist or make data)")
  from configs import evaluate as evaluate_config
  from rift_jax import data, models
  from rift_jax.models import convert
  config = evaluate_config.get_config("quickstart")
  config.unlock()
  config.model.width = 4
  info = data.INFO["fashion_mnist"]
  model = models.build_model(config, info)
  variables = convert.import_checkpoint(FIXTURE, model, info.image_shape)
  bias = np.array(variables["params"]["linear"]["bias"])
  bias[0] += 0.1
  variables["params"]["linear"]["bias"] = jnp.asarray(bias)
  path = str(tmp_path_factory.mktemp("ckpt") / "model.safetensors")
  convert.export_checkpoint(variables, path)
  return path, variables, config, model


def test_launch_evaluate_creates_a_missing_workdir_before_any_work(checkpoint,
                                                                   tmp_path):
  """A workdir that does not exist yet (nested) is created up front: the
  results of a long evaluation are never lost at the end."""
  path = checkpoint[0]
  out = tmp_path / "not" / "yet"
  proc = run_cli("launch.evaluate", *ARGS, f"--checkpoint={path}",
                 f"--workdir={out}", "--config.evaluate.suite=clean",
                 "--config.evaluate.num_examples=50")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((out / "eval_results.json").read_text())["n"] == 50


# Out of `make test` (`make test-slow`): three launches, two minutes on two
# cores; the launch itself, its workdir and bad entries are checked above
# and below in `make test`.
@pytest.mark.slow
def test_launch_evaluate_end_to_end(checkpoint, tmp_path):
  path, variables, config, model = checkpoint
  out = tmp_path / "eval"
  # On two XLA:CPU devices (batches sharded): the clean predictions below
  # must still be the unsharded model's, bit for bit.
  proc = run_cli("launch.evaluate", *ARGS, f"--checkpoint={path}",
                 f"--workdir={out}", "--config.evaluate.cpu_devices=2",
                 "--config.evaluate.suite= clean, pgd,apgd_ce ,ood")
  assert proc.returncode == 0, proc.stderr[-3000:]
  for f in ("eval_results.json", "eval_records.npz", "eval_report.md"):
    assert (out / f).exists(), f
  res = json.loads((out / "eval_results.json").read_text())
  from rift_jax import data
  from rift_jax.evaluation import records
  rec = records.load(str(out / "eval_records.npz"))
  assert res["n"] == 64 and res["split"] == "test" and res["checkpoint"] == path
  assert res["devices"] == {"platform": "cpu", "count": 2}
  assert set(res["attacks"]) == {"pgd", "apgd_ce"}

  # The file's model: its clean predictions on the first 64 test images of
  # the configured split, computed here, are the records'.
  split = data.load(config.data).test.take(slice(0, 64))
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, data.to_float(split.images))
  np.testing.assert_array_equal(rec["clean"],
                                np.argmax(logits, -1) == split.labels)
  assert rec["clean"].mean() > 0.3          # a trained model, not chance (0.1)

  # The records reproduce every reported number exactly.
  assert res["clean"] == 100.0 * rec["clean"].mean()
  for entry in ("pgd", "apgd_ce"):
    r = res["attacks"][entry]
    assert list(r["robust"]) == [entry]
    np.testing.assert_array_equal(rec[entry], rec[f"{entry}/{entry}"])
    assert r["final"] == r["robust"][entry] == 100.0 * rec[entry].mean()
    assert not np.any(rec[entry] & ~rec["clean"])   # robust ⊆ clean-correct
    assert rec[entry].shape == (64,)
  ood = rec["ood/contrast/1"]
  assert ood.shape == (16,)
  assert res["ood"]["source"] == "generated" and res["ood"]["n"] == 16
  assert res["ood"]["accuracy"]["contrast"]["1"] == 100.0 * ood.mean()
  assert res["ood"]["clean"] == 100.0 * rec["clean"][:16].mean()
  assert res["ood"]["summary"]["mean"] == pytest.approx(100.0 * ood.mean())
  report = (out / "eval_report.md").read_text()
  assert f"| clean | {res['clean']:.2f} | |" in report
  for entry in ("pgd", "apgd_ce"):
    r = res["attacks"][entry]
    assert f"| {r['label']} | {r['final']:.2f} |" in report
  assert "| contrast |" in report

  # Each attack entry kept its state; the same command again finds them
  # finished and gives the same numbers; other attack settings in the same
  # workdir are refused in one line, exit code 2 (the results stay).
  assert {p.name for p in (out / "suite_state").iterdir()} == {
      "pgd.npz", "apgd_ce.npz"}
  again = run_cli("launch.evaluate", *ARGS, f"--checkpoint={path}",
                  f"--workdir={out}",
                  "--config.evaluate.suite= clean, pgd,apgd_ce ,ood")
  assert again.returncode == 0, again.stderr[-3000:]
  res2 = json.loads((out / "eval_results.json").read_text())
  assert res2["attacks"]["apgd_ce"]["robust"] == r["robust"]
  assert res2["attacks"]["pgd"]["final"] == res["attacks"]["pgd"]["final"]
  other = run_cli("launch.evaluate", *ARGS, f"--checkpoint={path}",
                  f"--workdir={out}", "--config.evaluate.suite=apgd_ce",
                  "--config.evaluate.apgd.num_steps=3")
  lines = [l for l in other.stderr.splitlines() if l.startswith("error: ")]
  assert other.returncode == 2 and len(lines) == 1, other.stderr[-2000:]
  assert "was written for another attacks" in lines[0]
  assert json.loads((out / "eval_results.json").read_text()) == res2


def test_launch_evaluate_unknown_suite_entry(checkpoint, tmp_path):
  path = checkpoint[0]
  proc = run_cli("launch.evaluate", *ARGS, f"--checkpoint={path}",
                 f"--workdir={tmp_path}/w", "--config.evaluate.suite=clean,fgsm")
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "evaluate.suite entry='fgsm' is not allowed" in lines[0]
  assert not os.path.exists(tmp_path / "w")


def test_launch_evaluate_cpu_devices_must_divide_the_batch(checkpoint, tmp_path):
  proc = run_cli("launch.evaluate", *ARGS, f"--checkpoint={checkpoint[0]}",
                 f"--workdir={tmp_path}/w", "--config.evaluate.cpu_devices=3")
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert ("evaluate.batch_size=32 is not divisible by "
          "evaluate.cpu_devices=3") in lines[0]
  assert not os.path.exists(tmp_path / "w")

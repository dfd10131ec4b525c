"""`python -m benchmarks` runs its phases at small sizes, each in its own
process, and writes what `benchmarks/schema.py` declares; ours and PyTorch
compute the same logits and MRC values (the base and MRC phases, one shared
run of about a minute and a half on 2 busy cores, most of it compilation),
and AutoAttack's robust accuracy (the autoattack phase: `-m slow`, see
`test_autoattack_phase_agrees_with_torchattacks`)."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures",
                       "fmnist_resnet18_w4_pgdat.safetensors")
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
ENV.pop("XLA_FLAGS", None)
ENV.pop("JAX_COMPILATION_CACHE_DIR", None)  # it measures compilation

SMALL = {
    "base": ["--width=4", "--batch_size=8", "--num_steps=1", "--norolled",
             "--matmul_size=256"],
    "mrc": [f"--mrc_checkpoint={FIXTURE}", "--mrc_width=4", "--mrc_examples=64",
            "--mrc_batch_size=32", "--mrc_passes=2",
            "--mrc_modules=conv1,layer4.1.conv1"],
    "autoattack": [f"--aa_checkpoint={FIXTURE}", "--aa_images=16",
                   "--aa_batch_size=16", "--aa_steps=2", "--aa_targets=2",
                   "--aa_queries=10"],
}


def _benchmark(*args, timeout=60):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=timeout)


def _run(tmp_path, phases, timeout):
  out = tmp_path / "bench.json"
  proc = _benchmark("benchmarks", f"--out={out}", "--reps=1",
                    f"--phases={','.join(phases)}",
                    *(f for p in phases for f in SMALL[p]), timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not [p for p in os.listdir(out.parent) if p != "bench.json"
              and p != "bench.md"], "a phase's part file was left behind"
  res = json.loads(out.read_text())
  assert res["phases"] == list(phases)
  assert schema.problems(res) == []
  return res, out.with_suffix(".md").read_text()


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  # Out of `make test` (pytest -m slow, `make test-slow`): two phase
  # processes, 2 minutes of compilation on the CI machine.
  return _run(tmp_path_factory.mktemp("bench"), ("base", "mrc"), timeout=600)


@pytest.mark.slow
def test_every_phase_writes_what_the_schema_declares(result):
  res, _ = result
  # The flags given reached their phase.
  assert res["base_config"]["width"] == 4 and not res["base_config"]["rolled"]
  assert res["mrc_modules"] == ["conv1", "layer4.1.conv1"]
  assert res["mrc_config"]["weights"] == FIXTURE


@pytest.mark.slow
def test_ours_and_pytorch_agree(result):
  res, _ = result
  # The PyTorch twins are the same networks: same logits from the same weights.
  for key in ("logits_max_abs_diff_jax_vs_torch",
              "mrc_logits_max_abs_diff_jax_vs_torch"):
    assert res[key] < 1e-4, key
  # Both MRC routes and the authors' loop compute the same numbers.
  assert res["mrc_max_rel_diff_vs_torch"] < 0.02
  assert res["mrc_static_vs_mask_max_rel_diff"] < 1e-3


@pytest.mark.slow
def test_autoattack_phase_agrees_with_torchattacks(tmp_path):
  """Out of `make test` (`make test-slow`): about a minute more, and on the
  2-core CI machine this phase once ran past 15 minutes; torchattacks' FAB
  in the phase's process also corrupts the heap when PyTorch has one
  thread (`--threads=1`; docs/performance.md)."""
  res, md = _run(tmp_path, ("autoattack",), timeout=900)
  assert res["autoattack_config"]["num_images"] == 16
  assert res["autoattack_logits_max_abs_diff_jax_vs_torch"] < 1e-4
  for header in ("## autoattack", "| ours s (compiled) | ours compile s | "
                 "torchattacks s | speed-up | robust % ours | robust % "
                 "torchattacks |", "| apgd_t |"):
    assert header in md, header
  # Both AutoAttacks agree on the robust fixture (16 images: within one image),
  # after every attack.
  assert abs(res["autoattack_robust_acc_diff_pp"]) <= 100 / 16 + 1e-9
  ours, theirs = (res["autoattack_robust_acc_after_each"],
                  res["autoattack_torch_robust_acc_after_each"])
  assert list(ours) == list(theirs) == ["apgd_ce", "apgd_t", "fab_t", "square"]
  for attack in ours:
    assert abs(ours[attack] - theirs[attack]) <= 100 / 16 + 1e-9, attack


@pytest.mark.slow
def test_markdown_has_the_side_by_side_tables(result):
  _, md = result
  for header in ("## base", "## mrc", "| layer4.1.conv1 |",
                 "`pgd_speedup_vs_torch`"):
    assert header in md, header


def test_the_schema_check_finds_a_missing_or_undeclared_key():
  res = {"phases": ["mrc"], "versions": {}, "threads": {}, "peak_rss_mb": 1.0,
         "mrc_config": {"routes": ["static"]}}
  missing = schema.problems(res)
  assert "missing key 'mrc_speedup_vs_torch'" in missing
  assert not any("mrc_mask" in p for p in missing)   # mask route off
  res["mrc_config"]["routes"].append("mask")
  assert "missing key 'mrc_mask_seconds_per_module'" in schema.problems(res)
  assert "undeclared key 'speedup'" in schema.problems({**res, "speedup": 2.0})
  # --noaa_compiled_rerun: the compiled run's keys are not asked for, the
  # first run's are.
  aa = {"phases": ["autoattack"], "versions": {}, "threads": {},
        "peak_rss_mb": 1.0, "autoattack_config": {"compiled_rerun": False}}
  missing = schema.problems(aa)
  assert "missing key 'autoattack_first_run_seconds'" in missing
  assert "missing key 'autoattack_speedup_vs_torch_with_compile'" in missing
  assert not any(f"'{k}'" in p for p in missing for k in (
      "autoattack_seconds", "autoattack_speedup_vs_torch", "autoattack_runs_agree"))
  aa["autoattack_config"]["compiled_rerun"] = True
  assert "missing key 'autoattack_seconds'" in schema.problems(aa)


def test_benchmark_requires_out():
  proc = _benchmark("benchmarks")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --out is required")


@pytest.mark.parametrize("args, line", [
    (["benchmarks.mrc", "--mrc_width=0"], "flag --mrc_width=0: 0 is not a positive integer"),
    (["benchmarks", "--phases=base,gpu"], "flag --phases=['base', 'gpu']: expected "
     "a comma-separated list of base, mrc, autoattack"),
    (["benchmarks.autoattack", "--aa_unroll=fast"], "flag --aa_unroll=fast: expected "
     "auto, true, false or a positive integer"),
])
def test_bad_flags_get_one_line_and_exit_code_2(tmp_path, args, line):
  proc = _benchmark(*args, f"--out={tmp_path / 'b.json'}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [f"error: {line}"]
  assert not (tmp_path / "b.json").exists()


def test_torchattacks_side_loads_no_jax():
  """The PyTorch side of the autoattack phase runs in a spawned process
  that must not load JAX or jaxlib (in the process that ran our suite,
  torchattacks' FAB ran far slower and aborted with one thread): unpickling
  its function and building its model import neither."""
  pytest.importorskip("torch", reason="torch is not installed (pip install .[torch])")
  pytest.importorskip("torchattacks", reason="torchattacks is not installed")
  code = (
      "import sys, pickle\n"
      "from benchmarks import autoattack, common\n"
      "pickle.loads(pickle.dumps(autoattack._theirs_in_fresh_process))\n"
      "import torchattacks\n"
      "from rift_jax.models import torch_models\n"
      "sd = torch_models.ResNet18(num_classes=10, width=2, in_channels=1,\n"
      "                           mean=(0.5,), std=(0.25,)).state_dict()\n"
      "common.torch_resnet18(2, (28, 28, 1), (0.5,), (0.25,), sd)\n"
      "print(sorted(k for k in ('jax', 'jaxlib', 'flax') if k in sys.modules))\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == "[]"

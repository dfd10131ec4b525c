"""`launch.benchmark --reduced` runs end to end and writes every key.

`make test` runs the mrc phase (MRC ours vs the authors' PyTorch loop, the
numbers compared); all three phases, each in its own process, are
`pytest -m slow` (about 4 minutes on 2 cores, most of it compilation)."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
ENV.pop("XLA_FLAGS", None)
ENV.pop("JAX_COMPILATION_CACHE_DIR", None)  # it measures compilation

REQUIRED = ("pgd_speedup_vs_torch", "at_step_speedup_vs_torch",
            "pgd_flops_fraction_of_peak", "at_step_compile_s",
            "mrc_seconds_per_module", "interpolation_seconds_per_alpha",
            "mrc_mask_seconds_per_module", "mrc_torch_seconds_per_module",
            "mrc_speedup_vs_torch", "mrc_speedup_vs_mask",
            "autoattack_speedup_vs_torch", "autoattack_img_per_s",
            "autoattack_torch_img_per_s", "peak_rss_mb")


MRC_KEYS = ("mrc_seconds_per_module", "mrc_mask_seconds_per_module",
            "mrc_torch_seconds_per_module", "mrc_speedup_vs_torch",
            "mrc_speedup_vs_mask", "mrc_compile_s_per_module", "peak_rss_mb")


def _run(tmp_path, *flags):
  out = tmp_path / "bench.json"
  proc = subprocess.run([sys.executable, "-m", "launch.benchmark", f"--out={out}",
                         "--reduced", *flags], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text())


def test_reduced_mrc_phase_agrees_with_the_authors_loop(tmp_path):
  result = _run(tmp_path, "--phases=mrc")
  for key in MRC_KEYS:
    assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert result[key] > 0, key
  assert result["phases"] == ["mrc"]
  # The static and mask routes and the PyTorch loop compute the same MRC.
  assert result["mrc_max_rel_diff_vs_torch"] < 0.02
  assert result["mrc_static_vs_mask_max_rel_diff"] < 1e-3


@pytest.mark.slow
def test_reduced_benchmark_writes_every_key(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run([sys.executable, "-m", "launch.benchmark", f"--out={out}",
                         "--reduced"], cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  for key in REQUIRED:
    assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert result[key] > 0, key
  assert result["reduced"] is True
  # The PyTorch twin is the same network: same logits from the same weights.
  assert result["logits_max_abs_diff_jax_vs_torch"] < 1e-4
  assert result["pgd_flops_per_batch"] > 0
  assert result["phases"] == ["base", "mrc", "autoattack"]
  # Both MRC implementations and the PyTorch loop compute the same numbers.
  assert result["mrc_max_rel_diff_vs_torch"] < 0.02
  # Both AutoAttacks agree on the fixture (16 images: within one image).
  assert abs(result["autoattack_robust_acc"]
             - result["autoattack_torch_robust_acc"]) <= 100 / 16 + 1e-9


def test_benchmark_requires_out():
  proc = subprocess.run([sys.executable, "-m", "launch.benchmark"], cwd=ROOT,
                        env=ENV, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --out is required")


def test_benchmark_rejects_a_route_list_without_static(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "launch.benchmark",
                         f"--out={tmp_path / 'b.json'}", "--phases=mrc",
                         "--mrc_routes=mask"], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "--mrc_routes=mask: expected static or static,mask" in proc.stderr
  assert not (tmp_path / "b.json").exists()

"""`launch.benchmark --reduced` runs end to end and writes every key."""
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
ENV.pop("XLA_FLAGS", None)

REQUIRED = ("pgd_speedup_vs_torch", "at_step_speedup_vs_torch",
            "pgd_flops_fraction_of_peak", "at_step_compile_s",
            "mrc_seconds_per_module", "interpolation_seconds_per_alpha",
            "peak_rss_mb")


def test_reduced_benchmark_writes_every_key(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run([sys.executable, "-m", "launch.benchmark", f"--out={out}",
                         "--reduced"], cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  for key in REQUIRED:
    assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert result[key] > 0, key
  assert result["reduced"] is True
  # The PyTorch twin is the same network: same logits from the same weights.
  assert result["logits_max_abs_diff_jax_vs_torch"] < 1e-4
  assert result["pgd_flops_per_batch"] > 0


def test_benchmark_requires_out():
  proc = subprocess.run([sys.executable, "-m", "launch.benchmark"], cwd=ROOT,
                        env=ENV, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --out is required")

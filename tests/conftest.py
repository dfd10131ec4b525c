"""Shared fixtures: tiny models and synthetic data (CPU, seconds)."""
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

from rift_jax import data, models  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Many tests compile the same small programs (train step, evaluator) in new
# closures; XLA's persistent cache makes the repeats cheap.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(REPO, ".pytest_cache", "jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def synthetic():
  raw = data.synthetic_splits(num_train=512, num_test=128, seed=0)
  return data.split_dataset(data.INFO["synthetic"], raw, val_size=128)


@pytest.fixture(scope="session")
def tiny_cnn():
  info = data.INFO["synthetic"]
  model = models.create_model("small_cnn", num_classes=info.num_classes, width=4,
                              mean=info.mean, std=info.std)
  variables = models.init_variables(model, jax.random.PRNGKey(0), info.image_shape)
  return model, variables


def run_cli(*args, timeout=300):
  """Runs `python -m <args>` from the repo root; returns CompletedProcess."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)

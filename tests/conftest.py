"""Shared fixtures: tiny models and synthetic data (CPU, seconds)."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests compile the same small programs (train step, evaluator) in new
# closures or in the launchers they start as subprocesses; JAX's persistent
# compilation cache, set through the environment so that every subprocess
# (and every pytest-xdist worker) shares it, makes the repeats cheap.
# (tests/test_benchmark.py takes it out: the benchmark measures compilation.)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(REPO, ".pytest_cache", "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The tests' programs are small, so XLA:CPU's compilation is much of their
# time: LLVM at -O1 without its expensive passes compiles them about a
# third faster (measured: an MRC test 37 -> 25 s) and runs them as fast as
# the default (-O0 halves compile time but doubles the run time of the
# torchattacks cross-checks); the HLO, and so what is computed, is the same. Set
# through the environment, so the launchers the tests start get it too;
# tests/test_benchmark.py takes it out (it measures speed).
TEST_XLA_FLAGS = os.environ.get(
    "RIFT_JAX_TEST_XLA_FLAGS", "--xla_backend_optimization_level=1 "
    "--xla_llvm_disable_expensive_passes=true")
# The subprocesses the tests start (launchers, 2-device and 2-process
# workers) run tiny models, so compiling is nearly all of their time: LLVM
# at -O0 there (measured: the 2-device worker 65 -> 29 CPU-seconds). Same
# HLO, so the same computation; only LLVM's code generation differs.
SUBPROCESS_XLA_FLAGS = os.environ.get(
    "RIFT_JAX_TEST_SUBPROCESS_XLA_FLAGS", "--xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true")
_USER_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    f for f in (_USER_XLA_FLAGS, TEST_XLA_FLAGS) if f)


def subprocess_env(devices: int = 0, **extra) -> dict:
  """Environment for a subprocess a test starts: CPU, quiet, the
  subprocess XLA flags (and `devices` host devices when > 0; without it,
  one device, whatever the user's XLA_FLAGS force), plus `extra`."""
  flags = [f for f in _USER_XLA_FLAGS.split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if devices:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  flags.append(SUBPROCESS_XLA_FLAGS)
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
              XLA_FLAGS=" ".join(f for f in flags if f), **extra)

import jax  # noqa: E402
import pytest  # noqa: E402

from rift_jax import data, models  # noqa: E402
from rift_jax.data.datasets import DEBIAN_FASHION_MNIST  # noqa: E402


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


def run_cli(*args, timeout=300, env=None):
  """Runs `python -m <args>` from the repo root (`env`: more environment
  variables); returns CompletedProcess."""
  env = subprocess_env(**(env or {}))
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


FIXTURE = os.path.join(REPO, "tests", "fixtures", "fmnist_resnet18_w4_pgdat.safetensors")
FMNIST_DIR = DEBIAN_FASHION_MNIST


@pytest.fixture(scope="session")
def robust_pair():
  """The committed robust fixture (a ResNet-18, width 4, PGD-AT on
  Fashion-MNIST at ε = 0.1 with this project's launch/train, exported by
  rift_jax.models.convert; tests/fixtures/README.md) as our model and as a PyTorch
  model, with the first 200 Fashion-MNIST test images — what the
  torchattacks cross-checks compare on. Fields: torch, ta (torchattacks), tm
  (the PyTorch model, eval mode), fns, variables, split (uint8), x (float
  [200, 28, 28, 1]), y."""
  import types

  import numpy as np
  torch = pytest.importorskip("torch", reason="torch is not installed (pip "
                              "install .[torch]); the cross-checks need it")
  ta = pytest.importorskip("torchattacks", reason="torchattacks is not installed")
  images_path = os.path.join(FMNIST_DIR, "t10k-images-idx3-ubyte.gz")
  if not os.path.exists(images_path):
    pytest.skip(f"Fashion-MNIST not found at {images_path} (apt-get install "
                "dataset-fashion-mnist)")
  from rift_jax.models import convert, torch_models
  info = data.INFO["fashion_mnist"]
  model = models.create_model("resnet18", num_classes=10, width=4,
                              mean=info.mean, std=info.std)
  variables = convert.import_checkpoint(FIXTURE, model, info.image_shape)
  tm = torch_models.ResNet18(num_classes=10, width=4, in_channels=1,
                             mean=info.mean, std=info.std)
  tm.load_state_dict({k: torch.from_numpy(v) for k, v in
                      convert.load_state_dict(FIXTURE).items()}, strict=True)
  tm.eval()
  images = data.read_idx(images_path)[:200, :, :, None]
  labels = data.read_idx(os.path.join(
      FMNIST_DIR, "t10k-labels-idx1-ubyte.gz"))[:200].astype(np.int32)
  split = data.Split(images, labels)
  return types.SimpleNamespace(torch=torch, ta=ta, tm=tm,
                               fns=models.ModelFns(model), variables=variables,
                               split=split, x=data.to_float(images), y=labels)


def torch_robust_accuracy(r, attack, split=None) -> float:
  """Robust accuracy of a torchattacks attack on `split` (default: the
  fixture's images), counted as AutoAttack and our `run_suite` count it:
  correct on the clean image AND on the attack's output."""
  import numpy as np
  torch = r.torch
  split = split or r.split
  x = torch.from_numpy(data.to_float(split.images).transpose(0, 3, 1, 2).copy())
  y = torch.from_numpy(split.labels.astype(np.int64))
  robust = []
  for i in range(0, len(y), 250):
    xb, yb = x[i:i + 250], y[i:i + 250]
    xa = attack(xb, yb)
    with torch.no_grad():
      robust.append(((r.tm(xa).argmax(1) == yb) & (r.tm(xb).argmax(1) == yb)).numpy())
  return 100.0 * np.concatenate(robust).mean()


def randomize_bn(model, seed: int = 0):
  """Random BN affine parameters and running statistics of a PyTorch model
  (so a conversion that drops or swaps them shows up in the logits)."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        m.num_batches_tracked.fill_(7)
  return model

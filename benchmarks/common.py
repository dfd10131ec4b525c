"""What the benchmark phases share: the flags every phase takes, timing,
JAX's compile seconds, peak memory, the twin models (JAX and PyTorch, same
weights), Fashion-MNIST, and the result record (JSON + Markdown)."""
from __future__ import annotations

import dataclasses
import os
import platform
import resource
import sys
import time
from typing import Callable

from absl import flags

from benchmarks import schema

flags.DEFINE_string("out", None, "Where to write the JSON results; a Markdown "
                    "summary goes next to it (same name, .md).")
flags.DEFINE_integer("reps", 2, "Timed repetitions after the warm-up.",
                     lower_bound=1)
flags.DEFINE_integer("threads", 0, "Threads for PyTorch (0: os.cpu_count(), "
                     "which is what XLA:CPU uses).", lower_bound=0)
flags.DEFINE_integer("cpu_devices", 1, "XLA:CPU devices to split the host "
                     "into, batches sharded over them (as "
                     "--config.evaluate.cpu_devices of launch.evaluate).",
                     lower_bound=1)
FLAGS = flags.FLAGS

NUM_CLASSES = 10
# Fashion-MNIST threat model of configs/quickstart.py.
FMNIST_EPSILON, FMNIST_STEP = 0.1, 0.025


CHECKPOINT_HELP = ("Weights of the Fashion-MNIST ResNet-18 of this width (a "
                   ".safetensors / .pth file rift_jax.models.convert reads); "
                   "empty: a seeded random init.")


def file_or_empty(flag: str) -> None:
  """--<flag> must name an existing file when given."""
  flags.register_validator(flag, lambda p: not p or os.path.isfile(p),
                           message="file not found")


# ----------------------------------------------------------------- timing
_T0 = time.perf_counter()


def log(what: str) -> None:
  print(f"[{time.perf_counter() - _T0:6.1f} s] {what}", file=sys.stderr,
        flush=True)


def timed(fn: Callable[[], object], reps: int, warmup: bool = True
          ) -> tuple[float, list[float], float]:
  """Runs `fn` once to warm up (skip it for a program compiled ahead of
  time), then `reps` times: (best wall seconds, every run's wall seconds,
  least process CPU seconds of a run — all threads; on a shared machine the
  steadier measure of the work)."""
  if warmup:
    fn()
  wall, cpu = [], []
  for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return min(wall), wall, min(cpu)


class CompileClock:
  """Wall seconds JAX spends compiling: the spans of its own tracing,
  lowering and XLA-compile events (`jax.monitoring`), nested spans counted
  once. `seconds(t0, t1)`: compile time inside [t0, t1] (`time.time()`)."""

  EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration")

  def __init__(self):
    import jax
    self.spans: list[tuple[float, float]] = []
    jax.monitoring.register_event_time_span_listener(self._on_span)

  def _on_span(self, event, start, end, **_):
    if event in self.EVENTS:
      self.spans.append((float(start), float(end)))

  def seconds(self, t0: float, t1: float) -> float:
    clipped = sorted((max(a, t0), min(b, t1)) for a, b in self.spans
                     if b > t0 and a < t1)
    total, end = 0.0, float("-inf")
    for a, b in clipped:
      if b > end:
        total += b - max(a, end)
        end = b
    return total


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------ the models
@dataclasses.dataclass
class Twins:
  """One ResNet-18 in JAX (`fns`, `variables`) and in PyTorch (`torch`, in
  eval mode, holding the same weights); `source`: where the weights came from."""
  fns: object
  variables: dict
  torch: object
  source: str


def resnet18_twins(width: int, image_shape, mean, std, checkpoint: str = "",
                   conv_impl: str = "auto") -> Twins:
  """ResNet-18 (`rift_jax/models/torch_models.py` has the same layers and
  names) for `image_shape` (H, W, C) inputs: weights from `checkpoint`, else
  a seeded random init (PRNGKey(0))."""
  import jax
  import numpy as np
  import torch
  from rift_jax import models
  from rift_jax.models import convert
  model = models.create_model("resnet18", num_classes=NUM_CLASSES, width=width,
                              mean=mean, std=std, conv_impl=conv_impl)
  if checkpoint:
    variables = convert.import_checkpoint(checkpoint, model, image_shape)
    source = checkpoint
  else:
    variables = models.init_variables(model, jax.random.PRNGKey(0), image_shape)
    source = "random init (PRNGKey(0))"
  tmodel = torch_resnet18(width, image_shape, mean, std, {
      k: torch.from_numpy(np.array(v))
      for k, v in convert.to_state_dict(variables).items()})
  return Twins(models.ModelFns(model), variables, tmodel, source)


def torch_resnet18(width: int, image_shape, mean, std, state_dict: dict):
  """The PyTorch ResNet-18 of `resnet18_twins` holding `state_dict`, in
  eval mode."""
  from rift_jax.models import torch_models
  tmodel = torch_models.ResNet18(num_classes=NUM_CLASSES, width=width,
                                 in_channels=image_shape[-1], mean=mean, std=std)
  tmodel.load_state_dict(state_dict, strict=True)
  tmodel.eval()
  return tmodel


def fmnist_twins(width: int, checkpoint: str = "") -> Twins:
  from rift_jax import data
  info = data.INFO["fashion_mnist"]
  return resnet18_twins(width, info.image_shape, info.mean, info.std, checkpoint)


def nchw(x):
  """NHWC numpy -> NCHW torch tensor."""
  import numpy as np
  import torch
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def logits_max_abs_diff(twins: Twins, x) -> float:
  """max |logits of JAX − logits of PyTorch| on the NHWC float batch `x`."""
  import numpy as np
  import torch
  with torch.no_grad():
    theirs = twins.torch(nchw(x)).numpy()
  ours = np.asarray(twins.fns.logits(twins.variables, x, train=False))
  return float(np.max(np.abs(theirs - ours)))


def fmnist_test(n: int):
  """The first n Fashion-MNIST test images (uint8 `data.Split`) from the IDX
  files in $FASHION_MNIST_DIR (default: Debian's dataset-fashion-mnist)."""
  import numpy as np
  from rift_jax import data
  from rift_jax.errors import UserError
  folder = os.environ.get("FASHION_MNIST_DIR", data.DEBIAN_FASHION_MNIST)
  images = os.path.join(folder, "t10k-images-idx3-ubyte.gz")
  if not os.path.exists(images):
    raise UserError(f"Fashion-MNIST not found at {images} (apt-get install "
                    "dataset-fashion-mnist, or set FASHION_MNIST_DIR)")
  x = data.read_idx(images)[:n, :, :, None]
  y = data.read_idx(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))[:n]
  return data.Split(x, y.astype(np.int32))


# ------------------------------------------------------------ the record
class Record(dict):
  """A phase's results: only keys of `schema`; `save()` writes the JSON and
  the Markdown summary (after every step, so a run cut short keeps what it
  measured)."""

  def __init__(self, path: str):
    super().__init__()
    self.path = path

  def __setitem__(self, key, value):
    if key not in schema.ALL:
      raise KeyError(f"{key!r} is not in benchmarks/schema.py")
    super().__setitem__(key, value)

  def save(self) -> None:
    write(self.path, dict(self, peak_rss_mb=peak_rss_mb()))


def markdown_path(json_path: str) -> str:
  stem = json_path[:-5] if json_path.endswith(".json") else json_path
  return stem + ".md"


def write(path: str, result: dict) -> None:
  """`result` as JSON at `path` and as Markdown tables next to it."""
  from rift_jax import workdir
  workdir.write_json(path, result)
  workdir.write_text(markdown_path(path), markdown(result))


def _cell(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return "" if v is None else str(v).replace("|", "\\|")


def _table(header: list[str], rows: list[list]) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows])


def _side_by_side(t: schema.Table, result: dict) -> list[str]:
  columns = [c for c in t.columns if c[1] in result]
  rows = []
  for i, row in enumerate(result[t.rows]):
    cells = [row]
    for _, key, sub in columns:
      v = result[key]
      v = v.get(row) if isinstance(v, dict) else v[i]
      cells.append(v.get(sub) if sub else v)
    rows.append(cells)
  if t.total:
    total = dict(t.total)
    rows.append(["all"] + [result.get(total.get(h)) for h, _, _ in columns])
  return [f"**{t.title}**", ""] + _table(["", *(h for h, _, _ in columns)], rows)


def markdown(result: dict) -> str:
  """Per phase: its side-by-side tables, then key | value | meaning for
  every number, string and flag (lists and dicts are in the JSON)."""
  lines = ["# Benchmark results", "",
           f"versions: {result.get('versions')}; threads: {result.get('threads')}; "
           f"peak RSS {_cell(result.get('peak_rss_mb'))} MiB", ""]
  for phase in result.get("phases", []):
    lines += [f"## {phase}", ""]
    for t in schema.TABLES.get(phase, ()):
      lines += _side_by_side(t, result) + [""]
    rows = [[f"`{k}`", result[k], key.meaning]
            for k, key in schema.PHASES[phase].items()
            if k in result and not isinstance(result[k], (list, dict))]
    lines += _table(["key", "value", "meaning"], rows) + [""]
  return "\n".join(lines)


# ------------------------------------------------------------ a phase run
def versions_and_threads(record: Record, threads: int) -> None:
  """Sets PyTorch's thread count; records versions and thread setup."""
  import jax
  import torch
  import torchattacks
  torch.set_num_threads(threads or os.cpu_count())
  record["versions"] = dict(jax=jax.__version__, torch=torch.__version__,
                            torchattacks=torchattacks.__version__,
                            python=platform.python_version())
  record["threads"] = dict(cpu_count=os.cpu_count(), torch=torch.get_num_threads(),
                           jax_devices=jax.device_count(),
                           xla_flags=os.environ.get("XLA_FLAGS", ""))


def out_path() -> str:
  """--out, checked: required, in an existing folder."""
  from rift_jax.errors import UserError
  if not FLAGS.out:
    raise UserError("--out is required (the JSON file to write; a Markdown "
                    "summary goes next to it)")
  path = os.path.abspath(FLAGS.out)
  if not os.path.isdir(os.path.dirname(path)):
    raise UserError(f"--out={FLAGS.out!r}: folder does not exist")
  return path


def run_phase(phase: str, measure: Callable[[Record], None]) -> None:
  """The body of `python -m benchmarks.<phase>`: `measure(record)` fills
  the record; it is written, then checked against the schema."""
  from rift_jax import sharding
  record = Record(out_path())
  sharding.use_cpu_devices(FLAGS.cpu_devices, "--cpu_devices")
  record["phases"] = [phase]
  versions_and_threads(record, FLAGS.threads)
  measure(record)
  record[f"peak_rss_mb_{phase}"] = peak_rss_mb()
  record.save()
  finish(dict(record, peak_rss_mb=peak_rss_mb()))


def finish(result: dict) -> None:
  """Prints the headline numbers; fails if the result does not fit the schema."""
  for k, v in result.items():
    if "speedup" in k and isinstance(v, float):
      print(f"{k}: {v:.4g}")
  bad = schema.problems(result)
  if bad:
    raise RuntimeError("the result does not fit benchmarks/schema.py: "
                       + "; ".join(bad))


def main(phase: str, measure: Callable[[Record], None]) -> None:
  """absl entry point with the project's error policy (`launch.common.run`:
  bad input -> one line `error: ...`, exit code 2)."""
  from launch import common as launch_common
  launch_common.run(lambda: run_phase(phase, measure))

"""Run folders: creating them, writing results atomically, finding checkpoints.

Everything a run writes goes through these helpers so that a killed run never
leaves a half-written file that looks finished (write to a temporary name,
then rename), and so that "where is the model of this run" has one answer.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from rift_jax.errors import UserError


def prepare(workdir: str) -> str:
  """Creates `workdir` (absolute path returned); one clear error if it cannot
  be written. Every process probes with its own file, so hosts sharing a file
  system do not race."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    import jax
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir={workdir!r} is not writable: {e.strerror}") from None
  return workdir


def _json_default(o):
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


def dumps(obj: Any, indent: int | None = 2) -> str:
  """JSON text of results (numpy scalars and arrays become numbers/lists)."""
  return json.dumps(obj, indent=indent, default=_json_default)


def write_text(path: str, text: str) -> None:
  """Writes `text` atomically (temp file + rename)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def atomic_write(path: str, write) -> None:
  """`write(tmp_path)` then rename onto `path`: never a half-written file."""
  tmp = path + ".tmp"
  write(tmp)
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically: never a half-written file."""
  write_text(path, dumps(obj))


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def append_jsonl(path: str, record: dict) -> None:
  """Appends one JSON record as a line (metrics.jsonl)."""
  with open(path, "a") as f:
    f.write(dumps(record, indent=None) + "\n")


def read_jsonl(path: str) -> list[dict]:
  """The records of a JSON-lines file (metrics.jsonl); [] if it is absent."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def truncate_jsonl(path: str, max_epoch: int) -> None:
  """Drops records with `epoch > max_epoch` (a run resumed from that epoch
  rewrites them)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    keep = [l for l in f if l.strip() and json.loads(l).get("epoch", 0) <= max_epoch]
  write_text(path, "".join(keep))


def checkpoint_dir(path: str) -> str:
  """The variables folder a user means by `path`: a `launch.train` workdir
  (its best-by-validation checkpoint, `checkpoints/best`) or a variables
  folder itself (`checkpoint.save_variables`)."""
  path = os.path.abspath(os.path.expanduser(path))
  best = os.path.join(path, "checkpoints", "best")
  return best if os.path.isdir(best) else path


class Timer:
  """Seconds per stage, persisted in `<workdir>/timing.json` so the stages of
  a resumed run add up."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "timing.json")
    self.t = read_json(self.path) if os.path.exists(self.path) else {}

  def record(self, stage: str, seconds: float) -> None:
    self.t[stage] = round(self.t.get(stage, 0.0) + seconds, 2)
    write_json(self.path, self.t)

  def stage(self, name: str):
    """Context manager: `with timer.stage('mrc'): ...` records its seconds."""
    timer = self

    class _Stage:
      def __enter__(self):
        self.t0 = time.time()

      def __exit__(self, exc_type, *_):
        if exc_type is None:
          timer.record(name, time.time() - self.t0)
    return _Stage()

"""Every phase, each in its own process, merged into one result.

  python -m benchmarks --out=benchmark.json --reps=3
  python -m benchmarks --out=b.json --phases=mrc,autoattack --aa_checkpoint=...

Takes every phase's flags and hands each phase the ones given for it (and
--reps, --threads); the phases' results go into one JSON file (and its
Markdown summary), written after each phase. Separate processes keep the
phases' measurements and peak memory independent (docs/performance.md).
"""
from __future__ import annotations

import os
import subprocess
import sys

from absl import flags

from benchmarks import autoattack, base, common, mrc, schema

PHASES = {"base": base, "mrc": mrc, "autoattack": autoattack}
for _module in (common, *PHASES.values()):
  flags.adopt_module_key_flags(_module)
flags.DEFINE_list("phases", list(PHASES), "Which phases to run, in order: "
                  + ", ".join(PHASES) + ".")
flags.register_validator(
    "phases", lambda ps: bool(ps) and all(p in PHASES for p in ps),
    message="expected a comma-separated list of " + ", ".join(PHASES))
FLAGS = flags.FLAGS


def _die_with_parent() -> None:
  """In a phase's process (Linux): end when this process ends, so a killed
  benchmark leaves no phase running."""
  try:
    import ctypes
    import signal
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def phase_argv(phase: str, out: str) -> list[str]:
  """The command of one phase: the flags given here that it takes."""
  argv = [sys.executable, "-m", f"benchmarks.{phase}", f"--out={out}"]
  for module in (common, PHASES[phase]):
    argv += [f.serialize() for f in FLAGS.get_flags_for_module(module.__name__)
             if f.present and f.name != "out"]
  return argv


def merge(merged: dict, result: dict) -> dict:
  """`result` (one phase) added to `merged` (the phases before it)."""
  out = {**merged, **{k: v for k, v in result.items() if k not in schema.COMMON}}
  out["phases"] = merged.get("phases", []) + result["phases"]
  out["versions"] = merged.get("versions", result["versions"])
  out["threads"] = merged.get("threads", result["threads"])
  out["peak_rss_mb"] = max(merged.get("peak_rss_mb", 0.0), result["peak_rss_mb"])
  return out


def main() -> None:
  from rift_jax import workdir
  from rift_jax.errors import UserError
  path = common.out_path()
  merged: dict = {}
  for phase in FLAGS.phases:
    part = f"{path}.{phase}.json"
    common.log(f"phase {phase}: own process")
    rc = subprocess.call(phase_argv(phase, part), preexec_fn=_die_with_parent)
    if rc != 0:
      raise UserError(f"benchmark phase {phase!r} failed (exit {rc}); the "
                      f"phases before it are in {path}")
    merged = merge(merged, workdir.read_json(part))
    for leftover in (part, common.markdown_path(part)):
      os.remove(leftover)
    common.write(path, merged)
  common.finish(merged)


if __name__ == "__main__":
  from launch import common as launch_common
  launch_common.run(main)

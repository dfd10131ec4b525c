"""Two local processes with jax.distributed (gloo CPU collectives) against one.

Each process feeds only its rows of every global batch; the two together must
train exactly as one process on the whole batch, through a whole tiny
`train_and_evaluate` (two epochs of two PGD-AT steps, validation, Orbax
checkpoints saved by both processes and written once) that must finish in
both processes without a deadlock.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = subprocess_env()  # one CPU device per process
TOL = 1e-5


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(out_dir, *flags):
  return subprocess.Popen([sys.executable, "tests/_mp_worker.py", "process",
                           str(out_dir), *flags], cwd=ROOT, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(procs, timeout=900):
  outs = []
  try:
    for p in procs:
      _, err = p.communicate(timeout=timeout)
      outs.append((p.returncode, err))
  finally:
    for p in procs:  # never leave a process waiting on its peer
      if p.poll() is None:
        p.kill()
  return outs


def _load(folder, name):
  return (json.loads((folder / f"{name}.json").read_text()),
          np.load(folder / f"{name}.npz"))


def test_two_processes_agree_with_one(tmp_path):
  ref_dir, two_dir = tmp_path / "one", tmp_path / "two"
  ref_dir.mkdir()
  two_dir.mkdir()
  addr = f"--coordinator_address=127.0.0.1:{_free_port()}"
  procs = [_start(ref_dir)] + [
      _start(two_dir, addr, "--num_processes=2", f"--process_id={i}")
      for i in range(2)]
  for code, err in _wait(procs):
    assert code == 0, err[-3000:]

  ref, ref_vars = _load(ref_dir, "result")
  results = [_load(two_dir, "result"), _load(two_dir, "result_1")]
  assert ref["process_count"] == 1
  assert [r["rows"] for r, _ in results] == [[0, 4], [4, 8]]  # half a batch each
  for two, two_vars in results:
    assert (two["process_count"], two["device_count"]) == (2, 2)
    assert two["gathered"] == list(range(8))  # sharding.to_host of the rows
    # Same training (loss per epoch, best variables), same validation counts.
    assert len(two["history"]) == len(ref["history"]) == 2
    for r, t in zip(ref["history"], two["history"]):
      assert abs(r["train_loss"] - t["train_loss"]) <= TOL
      assert (r["val_clean"], r["val_adv"]) == (t["val_clean"], t["val_adv"])
    assert two["best_epoch"] == ref["best_epoch"]
    assert sorted(two_vars.files) == sorted(ref_vars.files)
    worst = max(float(np.max(np.abs(ref_vars[k] - two_vars[k])))
                for k in ref_vars.files)
    assert worst <= TOL, worst
  # Metrics and checkpoints written once, by process 0.
  work = two_dir / "workdir"
  assert len((work / "metrics.jsonl").read_text().splitlines()) == 2
  assert sorted(os.listdir(work / "checkpoints" / "latest")) == ["2"]

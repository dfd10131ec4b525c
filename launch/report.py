"""The method table from finished workdirs (like RiFT's Table 2), as markdown.

  python -m launch.report --workdirs='runs/methods/*' --out=runs/methods/table.md

Each workdir is one of:
- a RiFT run (`launch/rift.py`, results.json): the base method vs base+RiFT,
  test clean / PGD / OOD, the fine-tuned module and α;
- a training run (`launch/train.py`, test_results.json), e.g. CURE or AFT:
  clean and PGD accuracy on test, plus the AutoAttack-style number when a
  `launch/evaluate.py` result (eval_results.json) is in the workdir or its
  `eval/` folder.
Every row also gets NRR = 2·Nat·Rob/(Nat + Rob) (the CURE paper's
natural-robust trade-off score) with Rob = the strongest attack reported
(AutoAttack-style if there, else PGD). Directories that are neither are
skipped with a note.
"""
import glob
import json
import os

from absl import flags

from launch import common

flags.DEFINE_list("workdirs", None, "Workdirs (globs allowed), comma-separated.")
flags.DEFINE_string("out", None, "Also write the markdown here.")
FLAGS = common.FLAGS


def nrr(nat: float | None, rob: float | None) -> float | None:
  """Natural-robust ratio 2·Nat·Rob/(Nat + Rob) (harmonic mean), in %."""
  if nat is None or rob is None or nat + rob <= 0:
    return None
  return 2 * nat * rob / (nat + rob)


def _read(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _eval_results(workdir):
  for p in (os.path.join(workdir, "eval_results.json"),
            os.path.join(workdir, "eval", "eval_results.json")):
    r = _read(p)
    if r is not None:
      return r
  return None


def _train_seconds(workdir):
  total = 0.0
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        total += float(json.loads(line).get("train_s", 0.0))
  except (OSError, ValueError):
    return None
  return total


def collect(workdir: str) -> dict | None:
  """One row from a workdir, or None if it holds no finished run."""
  name = os.path.basename(os.path.normpath(workdir))
  rift = _read(os.path.join(workdir, "results.json"))
  if rift is not None and "at" in rift and "rift" in rift:
    return {"kind": "rift", "run": name, "method": rift.get("method", "?"),
            "base": rift["at"], "rift": rift["rift"],
            "module": rift.get("module"), "alpha": rift.get("alpha"),
            "seconds": sum((rift.get("timing_s") or {}).values()) or None,
            "train_seconds": (rift.get("timing_s") or {}).get("train_at")}
  test = _read(os.path.join(workdir, "test_results.json"))
  if test is None:
    return None
  config = _read(os.path.join(workdir, "config.json")) or {}
  row = {"kind": "train", "run": name, "method": config.get("method", "?"),
         "init_from": config.get("init_from") or "",
         "clean": test.get("test_clean"), "pgd": test.get("test_adv"),
         "aa": None, "seconds": _train_seconds(workdir)}
  ev = _eval_results(workdir)
  if ev is not None:
    row["clean"] = ev.get("clean", row["clean"])
    attacks = ev.get("attacks", {})
    if "pgd" in attacks:
      row["pgd"] = attacks["pgd"]["final"]
    if "autoattack" in attacks:
      row["aa"] = attacks["autoattack"]["final"]
  return row


def _f(v, digits=2):
  return "–" if v is None else f"{v:.{digits}f}"


def markdown(rows: list[dict]) -> str:
  out = []
  rift = [r for r in rows if r["kind"] == "rift"]
  if rift:
    out += ["Base method vs base + RiFT (test; PGD = the run's rift.test_attack):",
            "",
            "| method | clean | PGD | OOD | +RiFT clean | +RiFT PGD | +RiFT OOD "
            "| Δ clean | Δ PGD | module | α | wall (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rift:
      b, f = r["base"], r["rift"]
      d = lambda k: (None if b.get(k) is None or f.get(k) is None
                     else f[k] - b[k])
      out.append(f"| {r['method']} | {_f(b.get('clean'))} | {_f(b.get('adv'))} | "
                 f"{_f(b.get('ood'))} | {_f(f.get('clean'))} | {_f(f.get('adv'))} | "
                 f"{_f(f.get('ood'))} | {_f(d('clean'))} | {_f(d('adv'))} | "
                 f"{r['module']} | {_f(r['alpha'], 1)} | {_f(r['seconds'], 0)} |")
    out.append("")
  out += ["Natural-robust trade-off (test; NRR = 2·Nat·Rob/(Nat+Rob), Rob = "
          "AutoAttack-style if measured, else PGD):", "",
          "| method | run | clean | PGD | AutoAttack-style | NRR | train (s) |",
          "|---|---|---|---|---|---|---|"]
  for r in rows:
    if r["kind"] == "rift":
      b = r["base"]
      clean, pgd, aa = b.get("clean"), b.get("adv"), None
      secs = r.get("train_seconds")
    else:
      clean, pgd, aa, secs = r["clean"], r["pgd"], r["aa"], r["seconds"]
    rob = aa if aa is not None else pgd
    out.append(f"| {r['method']} | {r['run']} | {_f(clean)} | {_f(pgd)} | "
               f"{_f(aa)} | {_f(nrr(clean, rob))} | {_f(secs, 0)} |")
  return "\n".join(out) + "\n"


def main():
  from rift_jax.errors import UserError
  if not FLAGS.workdirs:
    raise UserError("--workdirs is required (comma-separated, globs allowed)")
  dirs = []
  for pattern in FLAGS.workdirs:
    found = sorted(glob.glob(os.path.expanduser(pattern)))
    if not found:
      raise UserError(f"workdirs entry {pattern!r} matches no directory")
    dirs += [d for d in found if os.path.isdir(d)]
  rows = []
  for d in dirs:
    row = collect(d)
    if row is None:
      print(f"note: {d} has no finished run (results.json/test_results.json); "
            "skipped")
    else:
      rows.append(row)
  if not rows:
    raise UserError(f"no finished run in {', '.join(dirs)}")
  text = markdown(rows)
  print(text)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  common.run(main)

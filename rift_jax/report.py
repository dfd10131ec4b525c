"""report.md and the two figures of a RiFT run, from results.json's content."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _fmt(v, digits=2):
  return "–" if v is None else f"{v:.{digits}f}"


def plot_mrc(results: dict, path: str) -> None:
  """Per module: MRC (bars, log scale) and robust-accuracy drop (line)."""
  names = list(results["mrc"])
  mrc = [max(results["mrc"][n]["mrc"], 1e-6) for n in names]
  drop = [results["mrc"][n]["adv_acc_drop"] for n in names]
  fig, ax = plt.subplots(figsize=(max(6, 0.42 * len(names)), 4))
  colors = ["tab:red" if n in results["modules"] else "tab:blue" for n in names]
  ax.bar(range(len(names)), mrc, color=colors)
  ax.set_yscale("log")
  ax.set_ylabel("MRC (loss increase)")
  ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7)
  ax2 = ax.twinx()
  ax2.plot(range(len(names)), drop, "k.-", label="robust acc. drop (pp)")
  ax2.set_ylabel("robust accuracy drop (pp)")
  ax2.legend(loc="upper left", fontsize=8)
  ax.set_title("Module robust criticality (red: fine-tuned module)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_interpolation(results: dict, path: str) -> None:
  curve = results["interpolation"]
  a = [c["alpha"] for c in curve]
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.plot(a, [c["clean"] for c in curve], "o-", label="clean (val)")
  ax.set_xlabel("α   (θ = (1−α)·θ_AT + α·θ_FT)")
  ax.set_ylabel("clean accuracy (%)")
  ax2 = ax.twinx()
  ax2.plot(a, [c["adv"] for c in curve], "s-", color="tab:orange",
           label="PGD (val)")
  ax2.set_ylabel("robust accuracy (%)")
  ax.axvline(results["alpha"], color="gray", ls="--", lw=1)
  lines = ax.get_legend_handles_labels()
  lines2 = ax2.get_legend_handles_labels()
  ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower left", fontsize=8)
  ax.set_title(f"Interpolation, chosen α = {results['alpha']:.1f}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(results: dict) -> str:
  at, rf = results["at"], results["rift"]
  cfg = results.get("config", {})
  ta = results.get("test_attack", {})
  lines = [
      "# RiFT report", "",
      f"Data: {cfg.get('data', {}).get('name')}, model: "
      f"{cfg.get('model', {}).get('name')} (width {cfg.get('model', {}).get('width')}), "
      f"base method: {results.get('method')}.",
      "",
      f"Test split: {results.get('n_test')} images. Adv = PGD-{ta.get('num_steps')} "
      f"(ε = {ta.get('epsilon', 0):.4g}, step {ta.get('step_size', 0):.4g}, "
      f"{ta.get('restarts')} restarts, an example counts as robust only if it "
      "survives every restart). OOD = mean clean accuracy over "
      f"{results.get('ood_set') or 'no corruption set (OOD disabled)'}.",
      "",
      "| model | Std | OOD | Adv |", "|---|---|---|---|",
      f"| AT | {_fmt(at['clean'])} | {_fmt(at.get('ood'))} | {_fmt(at['adv'])} |",
      f"| AT+RiFT | {_fmt(rf['clean'])} | {_fmt(rf.get('ood'))} | {_fmt(rf['adv'])} |",
      f"| Δ | {_fmt(rf['clean'] - at['clean'])} | "
      f"{_fmt(rf['ood'] - at['ood']) if rf.get('ood') is not None and at.get('ood') is not None else '–'}"
      f" | {_fmt(rf['adv'] - at['adv'])} |",
      "",
      f"Fine-tuned module(s): `{', '.join(results['modules'])}` "
      f"(target: {results.get('target')}), lr {results.get('lr')}, "
      f"chosen α = {results['alpha']:.2f} (validation: highest clean accuracy with "
      f"robust accuracy ≥ robust(α=0) − tolerance).",
      "",
  ]
  if results.get("ablations"):
    lines += ["## Ablations (paper Table 3)", "",
              "| fine-tuned | modules | α | Std | OOD | Adv |", "|---|---|---|---|---|---|",
              f"| {results.get('target')} | {', '.join(results['modules'])} | "
              f"{results['alpha']:.2f} | {_fmt(rf['clean'])} | {_fmt(rf.get('ood'))} | "
              f"{_fmt(rf['adv'])} |"]
    for name, a in results["ablations"].items():
      mods = a["modules"]
      mods = ", ".join(mods) if len(mods) <= 3 else f"{len(mods)} modules"
      lines.append(f"| {name} | {mods} | {a['alpha']:.2f} | {_fmt(a['clean'])} | "
                   f"{_fmt(a.get('ood'))} | {_fmt(a['adv'])} |")
    lines.append("")
  lines += ["## MRC ranking (lowest first)", "",
            "| rank | module | MRC | robust acc drop (pp) | ‖Δw‖/‖w‖ |",
            "|---|---|---|---|---|"]
  ranked = sorted(results["mrc"].items(), key=lambda kv: kv[1]["mrc"])
  for i, (name, v) in enumerate(ranked, 1):
    lines.append(f"| {i} | `{name}` | {v['mrc']:.4g} | {v['adv_acc_drop']:.2f} | "
                 f"{v['relative_norm']:.3f} |")
  lines += ["", "## Interpolation (validation)", "", "| α | clean | adv |", "|---|---|---|"]
  for c in results["interpolation"]:
    mark = " ←" if abs(c["alpha"] - results["alpha"]) < 1e-9 else ""
    lines.append(f"| {c['alpha']:.2f}{mark} | {c['clean']:.2f} | {c['adv']:.2f} |")
  det = results.get("ood_detail", {}) or {}
  if det.get("at") and det.get("rift"):
    lines += ["", "## OOD per corruption (test, mean over severities)", "",
              "| corruption | AT | AT+RiFT |", "|---|---|---|"]
    for name, v in det["at"]["per_corruption"].items():
      lines.append(f"| {name} | {v:.2f} | {det['rift']['per_corruption'][name]:.2f} |")
  lines += ["", "## Timing (s)", "", "| stage | seconds |", "|---|---|"]
  for k, v in results.get("timing_s", {}).items():
    lines.append(f"| {k} | {v:.1f} |")
  lines += ["", "Figures: `mrc.png` (MRC and robust-accuracy drop per module), "
            "`interpolation.png` (validation accuracy against α).", ""]
  return "\n".join(lines)


def write_report(workdir: str, results: dict) -> None:
  tmp = os.path.join(workdir, "report.md.tmp")
  with open(tmp, "w") as f:
    f.write(markdown(results))
  os.replace(tmp, os.path.join(workdir, "report.md"))
  plot_mrc(results, os.path.join(workdir, "mrc.png"))
  plot_interpolation(results, os.path.join(workdir, "interpolation.png"))

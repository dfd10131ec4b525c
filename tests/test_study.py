"""Study aggregation: per-seed and pooled paired statistics on hand-made
records, and a real (tiny) study run end to end with a kill and a resume."""
import json
import os

import numpy as np
import pytest

from rift_jax.evaluation import records, stats
from rift_jax.experiments import study


def _fake_run(d, at_clean, rift_clean, at_adv, rift_adv, module="conv1"):
  os.makedirs(d, exist_ok=True)
  rec = {"at/clean": at_clean, "at/adv": at_adv, "rift/clean": rift_clean,
         "rift/adv": rift_adv}
  records.save(os.path.join(d, "records.npz"), rec)
  pct = lambda v: 100.0 * float(np.mean(v))
  with open(os.path.join(d, "results.json"), "w") as f:
    json.dump({"n_test": len(at_clean), "module": module, "modules": [module],
               "alpha": 0.5, "lr": 1e-3, "timing_s": {"test": 60.0},
               "at": {"clean": pct(at_clean), "adv": pct(at_adv), "ood": None},
               "rift": {"clean": pct(rift_clean), "adv": pct(rift_adv),
                        "ood": None}}, f)


def test_aggregate_by_hand(tmp_path):
  n = 200
  base = np.zeros(n, bool)
  base[:100] = True                      # AT: 50 %
  seeds = {0: 18, 1: 20, 2: 22}          # RiFT gets k more examples right
  for s, k in seeds.items():
    better = base.copy()
    better[100:100 + k] = True
    _fake_run(tmp_path / f"seed_{s}", base, better, base[::-1].copy(),
              base[::-1].copy())
  out = study.aggregate(str(tmp_path), [0, 1, 2])
  c = out["main"]["clean"]
  # Per-seed Δ = k / n in pp: 9, 10, 11 → mean 10, std 1, t-interval by hand.
  assert c["delta"] == pytest.approx([9.0, 10.0, 11.0])
  assert c["delta_mean"] == pytest.approx(10.0)
  assert c["delta_std"] == pytest.approx(1.0)
  half = stats.t_ppf(0.975, 2) * 1.0 / np.sqrt(3)
  assert c["delta_seed_ci95"] == pytest.approx([10.0 - half, 10.0 + half])
  # Pooled over the 200 shared images: 22 images improve (18 in all three
  # seeds, 2 in two, 2 in one), none gets worse: only the all-positive sign
  # vector reaches the observed sum, so p sits at its Monte-Carlo floor;
  # Holm over the family (clean, adv) doubles it.
  from rift_jax.evaluation import paired
  assert c["pooled"]["delta"] == pytest.approx(10.0)
  assert c["pooled"]["n"] == n and c["pooled"]["seeds"] == 3
  floor = stats.p_floor(paired.PERMUTATIONS)
  assert c["pooled"]["p_permutation"] == pytest.approx(floor)
  assert c["pooled"]["p_holm"] == pytest.approx(2 * floor)
  assert c["verdict"] == "real"           # both intervals exclude 0
  # The cluster interval: images resampled with their three seeds together
  # (per-image mean Δ), not the 600 rows as if independent.
  d = (np.stack([np.r_[np.zeros(100), np.ones(k), np.zeros(100 - k)]
                 for k in seeds.values()])).mean(0)
  lo, hi = c["pooled"]["ci95"]
  se = 100 * d.std() / np.sqrt(n)
  assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)
  a = out["main"]["adv"]                 # identical models: no difference
  assert a["delta_mean"] == 0 and a["pooled"]["ci95"] == [0.0, 0.0]
  assert a["verdict"] == "within noise"
  assert "ood" not in out["main"]
  text = open(tmp_path / "study.md").read()
  assert "| Δ, mean [95 % t-interval over seeds] | +10.00 [" in text
  assert os.path.exists(tmp_path / "study.png")
  # A seed that has not finished is one clear error.
  from rift_jax.errors import UserError
  with pytest.raises(UserError, match="seed 3 has not finished"):
    study.aggregate(str(tmp_path), [0, 3])


def test_variant_configs_change_one_thing():
  from tests.configs import tiny_study
  c = tiny_study.get_config()
  v = study.variant_config(c, 1, "all_modules", "/runs/seed_1/at")
  assert v.seed == 1 and v.rift.at_checkpoint == "/runs/seed_1/at"
  assert v.rift.finetune.candidates == "all" != c.rift.finetune.candidates
  assert study.variant_config(c, 0, "frozen_bn", "x").rift.finetune.update_batch_stats is False
  v = study.variant_config(c, 0, "alpha_ood", "x")
  assert v.rift.alpha_rule == "robust_and_ood" and v.rift.ood_val.enabled
  assert study.seed_config(c, 2).data.to_dict() == c.data.to_dict()
  for name in study.VARIANTS:               # every variant is a valid config
    from rift_jax.experiments import validation
    validation.validate_rift(study.variant_config(c, 0, name, ""))


def test_variant_fine_tunes_at_the_main_runs_chosen_lr():
  from tests.configs import tiny_study
  c = tiny_study.get_config()
  v = study.variant_config(c, 0, "frozen_bn", "x", lr=0.02)
  assert v.rift.finetune.optim.lr == pytest.approx(0.02)
  assert tuple(v.rift.finetune.lr_sweep) == ()
  # Variants that set the lr themselves keep theirs.
  assert study.variant_config(c, 0, "lr0", "x", lr=0.02).rift.finetune.optim.lr == 0
  assert tuple(study.variant_config(c, 0, "lr_sweep", "x", lr=0.02)
               .rift.finetune.lr_sweep) == (1e-3, 1e-2, 3e-2)


def test_tiny_study_end_to_end_with_every_diagnostic(tmp_path):
  """One seed of a tiny study through every new stage: OOD along α on
  corrupted validation images, the BatchNorm swap, a variant that reuses the
  main run's fine-tuning (alpha_ood) and θ_AT's test records, the MRC
  stability check; the finished seed lands in results_dir and the tables are
  built from there."""
  from tests.configs import tiny_study
  c = tiny_study.get_config()
  c.unlock()
  c.data.val_size = 160                      # two disjoint fixed sets of 64
  c.rift.bn_swap = True
  c.study.variants = {"alpha_ood": (0,)}
  c.study.stability_seeds = (0,)
  c.study.results_dir = str(tmp_path / "results")
  out = study.run(c, str(tmp_path / "w"), [0])
  seed_dir = tmp_path / "w" / "seed_0"
  res = json.load(open(seed_dir / "results.json"))
  # OOD on corrupted validation images at every α; α=0 is θ_AT.
  assert all("ood" in e for e in res["interpolation"])
  assert res["alpha_rule"] == "robust"
  # The BN swap: two models, each paired against θ_AT on the same images.
  assert set(res["bn_swap"]) == {"at_params_star_stats", "star_params_at_stats"}
  for e in res["bn_swap"].values():
    assert e["paired"]["clean"]["n"] == res["n_test"]
  # The variant reused θ_FT (no fine-tuning stage of its own) and θ_AT's
  # test records (identical to the main run's).
  vdir = seed_dir / "variants" / "alpha_ood"
  vres = json.load(open(vdir / "results.json"))
  assert "finetune" not in vres["timing_s"]
  assert vres["alpha_rule"] == "robust_and_ood"
  main_at = records.of_model(records.load(str(seed_dir / "records.npz")), "at")
  var_at = records.of_model(records.load(str(vdir / "records.npz")), "at")
  assert all(np.array_equal(main_at[k], var_at[k]) for k in main_at)
  # The chosen α keeps corrupted-validation accuracy (the rule's promise).
  ref = vres["interpolation"][0]
  chosen = [e for e in vres["interpolation"] if e["alpha"] == vres["alpha"]][0]
  assert chosen["ood"] >= ref["ood"] - c.rift.tolerance - 1e-9
  # MRC stability: three comparisons over the same modules.
  stab = json.load(open(seed_dir / "mrc_stability.json"))
  assert set(stab["comparisons"]) == {"batch500", "per_step", "disjoint_set"}
  for comp in stab["comparisons"].values():
    assert -1.0 <= comp["spearman"] <= 1.0
    assert set(comp["mrc"]) == set(res["mrc"])
  # Results dir: the small outputs only, and the tables built from them.
  kept = tmp_path / "results" / "seed_0"
  assert (kept / "results.json").exists() and (kept / "at" / "done.json").exists()
  assert (kept / "variants" / "alpha_ood" / "records.npz").exists()
  assert not list(kept.rglob("*checkpoint*")) and not (kept / "fixed_set.npz").exists()
  assert study.finished_seeds(str(tmp_path / "results")) == [0]
  text = open(tmp_path / "results" / "study.md").read()
  assert "## Why does OOD move? The BatchNorm swap" in text
  assert "## How stable is the MRC ranking?" in text
  assert "(Holm)" in text and "Adv kept (non-inferiority)?" in text
  assert set(out["variants"]) == {"alpha_ood"}


def test_write_into_replaces_only_the_marked_section(tmp_path):
  from rift_jax.errors import UserError
  p = tmp_path / "README.md"
  p.write_text(f"# top\n\n{study.BEGIN}\nold table\n{study.END}\n\n## after\n")
  study.write_into(str(p), "### RiFT study\n\n| new | table |\n")
  assert p.read_text() == (f"# top\n\n{study.BEGIN}\n### RiFT study\n\n"
                           f"| new | table |\n{study.END}\n\n## after\n")
  p.write_text("no markers\n")
  with pytest.raises(UserError, match="needs one"):
    study.write_into(str(p), "x")
  assert p.read_text() == "no markers\n"


def test_a_later_seed_runs_alone_while_variants_name_earlier_seeds():
  """Seeds are run across sessions: --seeds=1 with variants (and the
  stability check) listed for seed 0 is valid, and seed 1 runs none of
  them; a negative stability seed is still refused."""
  from rift_jax.errors import UserError
  from tests.configs import tiny_study
  c = tiny_study.get_config()                 # variants: frozen_bn on seed 0
  c.unlock()
  c.study.stability_seeds = (0,)
  study.validate(c, [1])
  c.study.stability_seeds = (-1,)
  with pytest.raises(UserError, match="study.stability_seeds entry"):
    study.validate(c, [1])


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def test_save_seed_keeps_committed_runs_a_rerun_has_not_finished(tmp_path):
  """A seed re-run from a lost workdir: its finished main run replaces the
  kept one file by file, the committed variant and stability record it has
  not redone stay, an unfinished variant is not kept, and no .tmp/.old
  directory is left behind (nor counted as a seed)."""
  res = tmp_path / "results" / "seed_0"
  _write(str(res / "results.json"), "old main")
  _write(str(res / "records.npz"), "old records")
  _write(str(res / "mrc_stability.json"), "old stability")
  _write(str(res / "variants" / "frozen_bn" / "results.json"), "old variant")
  work = tmp_path / "w" / "seed_0"
  _write(str(work / "results.json"), "new main")
  _write(str(work / "records.npz"), "new records")
  _write(str(work / "checkpoints" / "ckpt"), "not kept")
  _write(str(work / "variants" / "lr0" / "mrc.json"), "unfinished")
  study.save_seed(str(tmp_path / "w"), 0, str(tmp_path / "results"))
  read = lambda p: open(p).read()
  assert read(res / "results.json") == "new main"
  assert read(res / "records.npz") == "new records"
  assert read(res / "mrc_stability.json") == "old stability"
  assert read(res / "variants" / "frozen_bn" / "results.json") == "old variant"
  assert not (res / "variants" / "lr0").exists()
  assert not (res / "checkpoints").exists()
  assert sorted(os.listdir(tmp_path / "results")) == ["seed_0"]
  # A crash between the two renames left only seed_0.old: restored first.
  os.replace(res, str(res) + ".old")
  study.save_seed(str(tmp_path / "w"), 0, str(tmp_path / "results"))
  assert read(res / "mrc_stability.json") == "old stability"
  assert sorted(os.listdir(tmp_path / "results")) == ["seed_0"]

"""Study aggregation: per-seed and pooled paired statistics on hand-made
records, and a real (tiny) study run end to end with a kill and a resume."""
import json
import os

import numpy as np
import pytest

from rift_jax import records, stats, study


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
  # Pooled: 60 discordant pairs, all in RiFT's favour, over 600 examples.
  assert c["pooled"]["delta"] == pytest.approx(10.0)
  assert c["pooled"]["n"] == 3 * n
  assert c["pooled"]["p_mcnemar"] == pytest.approx(2 * 0.5 ** 60)
  assert c["verdict"] == "real"           # both intervals exclude 0
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
  v = study.variant_config(c, 1, "lr_x10", "/runs/seed_1/at")
  assert v.seed == 1 and v.rift.at_checkpoint == "/runs/seed_1/at"
  assert v.rift.finetune.optim.lr == pytest.approx(10 * c.rift.finetune.optim.lr)
  assert study.variant_config(c, 0, "conv3x3", "x").rift.finetune.candidates == "conv3x3"
  assert study.variant_config(c, 0, "frozen_bn", "x").rift.finetune.update_batch_stats is False
  assert study.seed_config(c, 2).data.to_dict() == c.data.to_dict()


def test_variant_fine_tunes_at_the_main_runs_chosen_lr():
  from tests.configs import tiny_study
  c = tiny_study.get_config()
  v = study.variant_config(c, 0, "conv3x3", "x", lr=0.02)
  assert v.rift.finetune.optim.lr == pytest.approx(0.02)
  assert tuple(v.rift.finetune.lr_sweep) == ()
  v = study.variant_config(c, 0, "lr_x10", "x", lr=0.02)
  assert v.rift.finetune.optim.lr == pytest.approx(0.2)

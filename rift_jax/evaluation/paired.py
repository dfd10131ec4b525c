"""Comparisons of models on the same test images, from their per-example
records (`rift_jax.evaluation.records`): the one place where results become
numbers with intervals.

  summarize_records  clean / adv / OOD accuracy (%) of one model
  ood_table          {corruption: {severity: bool [n]}} from the records
  paired             model B vs model A: Δ, 95 % paired interval, p-value,
                     verdict (and per corruption family; non-inferiority)

Records hold bool `[n]` per key for one run, or `[seeds, n]` for a study's
seeds pooled (the same images in every seed): `rift_jax.evaluation.stats`
then resamples images with all their seeds' outcomes together.
"""
from __future__ import annotations

import numpy as np

from rift_jax.data import corruptions
from rift_jax.evaluation import stats


def summarize_records(rec: dict, ood_names=None) -> dict:
  """{'clean', 'adv', 'ood', 'ood_detail'} in percent from one model's records."""
  out = {"clean": 100.0 * float(rec["clean"].mean()),
         "adv": 100.0 * float(rec["adv"].mean())}
  table = ood_table(rec)
  if table:
    acc = corruptions.accuracy_of(table)
    out["ood_detail"] = corruptions.summarize(acc)
    out["ood"] = out["ood_detail"]["mean"]
  return out


def ood_table(rec: dict) -> dict:
  """{corruption: {severity: bool [n]}} from 'ood/<c>/<s>' records."""
  table: dict = {}
  for k, v in rec.items():
    if k.startswith("ood/"):
      _, c, s = k.split("/")
      table.setdefault(c, {})[int(s)] = v
  return table


PERMUTATIONS = 10000   # resamples of every Monte-Carlo p-value


def paired(a: dict, b: dict, seed: int = 0, margin: float | None = None) -> dict:
  """Model b vs model a on the same test images: Δ in pp with a 95 %
  paired-bootstrap interval over images, and a p-value.

  Records (`pipeline.records_on_test`) hold bool `[n]` per key for one run, or `[seeds,
  n]` for a study's seeds pooled: the same images in every seed, so images
  are resampled with all their seeds' outcomes kept together (a cluster
  bootstrap, `rift_jax.evaluation.stats`). p: exact McNemar for one run's clean/adv; a
  paired sign-flip permutation test over images otherwise (pooled seeds,
  and OOD: the per-image mean over corruptions × severities), reported with
  its floor 1/(R + 1). OOD also per corruption family. `margin` (pp): adv
  gets `noninferior` — its interval's lower bound above −margin.
  """
  pooled = np.ndim(a["clean"]) > 1
  floor = stats.p_floor(PERMUTATIONS)

  def entry(xa, xb, exact: bool) -> dict:
    delta, lo, hi = stats.paired_bootstrap(xa, xb, seed=seed)
    e = {"delta": delta, "ci95": [lo, hi], "n": int(xa.shape[-1])}
    if exact:
      e["p_mcnemar"] = p = stats.mcnemar(xa, xb)
    else:
      e["p_permutation"] = p = stats.paired_permutation(
          xa, xb, num_resamples=PERMUTATIONS, seed=seed)
      e["p_floor"] = floor
    e["verdict"] = stats.verdict(lo, hi, p)
    return e

  out = {}
  for k in ("clean", "adv"):
    out[k] = entry(a[k], b[k], exact=not pooled)
    if pooled:
      out[k]["seeds"] = int(np.shape(a[k])[0])
  if margin is not None:
    out["adv"]["margin"] = float(margin)
    out["adv"]["noninferior"] = stats.noninferior(out["adv"]["ci95"][0], margin)
  ta, tb = ood_table(a), ood_table(b)
  if ta and tb:
    xa, xb = corruptions.per_image(ta), corruptions.per_image(tb)
    out["ood"] = {**entry(xa, xb, exact=False), "cells": int(xa.shape[-2]),
                  "test": "paired bootstrap over images of the per-image mean "
                          "over corruptions × severities"
                          + (" × seeds" if pooled else "")
                          + "; p: paired sign-flip permutation test of the "
                          "same statistic"}
    families: dict = {}
    for c in ta:
      families.setdefault(corruptions.FAMILIES.get(c, "other"), []).append(c)
    out["ood_family"] = {
        f: {**entry(corruptions.per_image(ta, names), corruptions.per_image(tb, names),
                    exact=False), "corruptions": names}
        for f, names in families.items()}
  return out

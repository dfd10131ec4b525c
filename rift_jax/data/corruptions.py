"""Common corruptions (Hendrycks & Dietterich 2019): generated, or read from disk.

Three ways to get corrupted test sets, all returning
`{corruption: {severity: data.Split}}` with uint8 images `[N, H, W, C]`:

- `generate(split, names, severities)`: any data set, corrupted with
  `imagecorruptions-imaug` (`corrupt(image, severity, corruption_name)`),
  deterministic for a seed, cached on disk as .npz.
- `load_cifar10_c(data_dir, ...)`: TFDS `cifar10_corrupted/<name>_<severity>`.
- `load_cifar100_c(root, ...)`, `load_tiny_imagenet_c(root, ...)`: the
  original release layouts (`<root>/<name>.npy` + `labels.npy`;
  `<root>/<name>/<severity>/<wnid>/*.JPEG`).

`summarize(acc)` turns `{corruption: {severity: accuracy}}` into the numbers
papers report (per corruption, per severity, per family, mean) and always
names the set that was averaged: RiFT's paper says 15 types, its official code
averages 18 (all 19 CIFAR-10-C files except glass_blur).

Small and grayscale images: the library needs RGB images of at least 32x32.
Smaller images are reflect-padded to 32 on each short side (content keeps its
scale, so blur kernels and noise act as on CIFAR), grayscale is replicated to
three channels; afterwards the pad is cropped away and grayscale images are
converted back with ITU-R 601 luma weights (0.299, 0.587, 0.114), as PIL's
`convert('L')` does.

Determinism: the library draws from numpy's global RNG (and takes an explicit
`seed` for impulse_noise and glass_blur). Image i of corruption c at severity
s is corrupted after seeding with SeedSequence([seed, c, s, i]), so an image's
corruption does not depend on how many images were asked for.
Timing: glass_blur compiles a numba kernel on its first call (~3 s once);
after that every type takes about 1 ms per 32x32 image on this CPU.
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from rift_jax import data
from rift_jax.data import datasets
from rift_jax.errors import UserError, check_choice

# The 19 types of imagecorruptions(-imaug), in the library's order: the 15 of
# CIFAR-10-C / ImageNet-C, then the 4 'validation' (extra) types.
ALL_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
    "glass_blur", "motion_blur", "zoom_blur", "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate")
STANDARD_15 = ALL_CORRUPTIONS[:15]
# The 18 the official RiFT code averages: every CIFAR-10-C type but glass_blur.
RIFT_CODE_18 = tuple(n for n in ALL_CORRUPTIONS if n != "glass_blur")
FAMILIES = {
    **dict.fromkeys(("gaussian_noise", "shot_noise", "impulse_noise"), "noise"),
    **dict.fromkeys(("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
                    "blur"),
    **dict.fromkeys(("snow", "frost", "fog", "brightness"), "weather"),
    **dict.fromkeys(("contrast", "elastic_transform", "pixelate",
                     "jpeg_compression"), "digital"),
    **dict.fromkeys(("speckle_noise", "gaussian_blur", "spatter", "saturate"),
                    "extra"),
}
SEVERITIES = (1, 2, 3, 4, 5)
NAME_SETS = {"standard": STANDARD_15, "all": ALL_CORRUPTIONS,
             "rift_code": RIFT_CODE_18}
_MIN_SIDE = 32
_SEEDED_BY_ARGUMENT = ("impulse_noise", "glass_blur")  # take `seed=` kwargs

Sets = dict[str, dict[int, data.Split]]


def resolve_names(names: str | Sequence[str]) -> tuple[str, ...]:
  """'standard' | 'all' | 'rift_code' | a comma list | a sequence -> names.

  Raises UserError naming an unknown corruption and listing the valid ones.
  """
  if isinstance(names, str):
    if names in NAME_SETS:
      return NAME_SETS[names]
    names = [n.strip() for n in names.split(",") if n.strip()]
  names = tuple(names)
  if not names:
    raise UserError("no corruption named; choose names from: "
                    + ", ".join(ALL_CORRUPTIONS) + " (or 'standard', 'all', "
                    "'rift_code')")
  for n in names:
    check_choice("corruption", n, ALL_CORRUPTIONS)
  return names


def _check_severities(severities: Sequence[int]) -> tuple[int, ...]:
  severities = tuple(int(s) for s in severities)
  if not severities:
    raise UserError("no severity given; choose from 1, 2, 3, 4, 5")
  for s in severities:
    check_choice("severity", s, SEVERITIES)
  return severities


# ------------------------------------------------------------- generation
def corrupt_image(image: np.ndarray, name: str, severity: int, seed: int
                  ) -> np.ndarray:
  """One uint8 image `[H, W, C]` (C = 1 or 3) -> corrupted uint8 `[H, W, C]`."""
  from imagecorruptions import corrupt
  h, w, c = image.shape
  ph, pw = max(0, _MIN_SIDE - h), max(0, _MIN_SIDE - w)
  pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
  x = np.pad(image, pads, mode="reflect") if ph or pw else image
  if c == 1:
    x = np.repeat(x, 3, axis=-1)
  np.random.seed(seed)
  kw = {"seed": seed} if name in _SEEDED_BY_ARGUMENT else {}
  try:
    # spatter at severity 1-3 divides by the largest drop, 0 when no drop
    # landed on a small image: NaN, cast to black. No drop = the clean image.
    with np.errstate(invalid="raise" if name == "spatter" else "warn"):
      out = np.asarray(corrupt(np.ascontiguousarray(x), severity=severity,
                               corruption_name=name, **kw))
  except FloatingPointError:
    out = x
  out = out[pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w]
  if c == 1:
    luma = out.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    out = np.clip(np.round(luma), 0, 255)[..., None]
  return out.astype(np.uint8)


def _image_seed(seed: int, name: str, severity: int, index: int) -> int:
  ss = np.random.SeedSequence([seed, ALL_CORRUPTIONS.index(name), severity, index])
  return int(ss.generate_state(1)[0])


def corrupt_images(images: np.ndarray, name: str, severity: int, seed: int = 0,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
  """uint8 `[N, H, W, C]` -> corrupted uint8 `[N, H, W, C]`, image i seeded by
  SeedSequence([seed, corruption index, severity, i])."""
  state = np.random.get_state()  # do not disturb the caller's global RNG
  try:
    out = np.empty_like(images)
    for i, img in enumerate(images):
      out[i] = corrupt_image(img, name, severity,
                             _image_seed(seed, name, severity, i))
      if progress is not None:
        progress(1)
  finally:
    np.random.set_state(state)
  return out


def content_hash(split: data.Split) -> str:
  """SHA-1 of images and labels (shape, dtype and bytes): the cache key of a split."""
  h = hashlib.sha1()
  for a in (split.images, split.labels):
    a = np.ascontiguousarray(a)
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _library_version() -> str:
  try:
    from importlib.metadata import version
    return version("imagecorruptions-imaug")
  except Exception:  # noqa: BLE001 (not installed under that name)
    return "unknown"


def generate(split: data.Split, names: str | Sequence[str] = "standard",
             severities: Sequence[int] = SEVERITIES, *,
             max_images: int | None = None,
             per_corruption_max: Mapping[str, int] | None = None,
             seed: int = 0, cache_dir: str | None = None,
             progress: bool = True) -> Sets:
  """Corrupted copies of `split` for every (corruption, severity).

  Args:
    split: uint8 images `[N, H, W, C]` (C = 1 or 3) with labels `[N]`.
    names: corruption names or a set name ('standard', 'all', 'rift_code').
    severities: subset of 1..5.
    max_images: use only the first `max_images` images of `split`.
    per_corruption_max: a lower cap for some corruptions, e.g. {'glass_blur': 500}.
    seed: generation seed (see the module docstring).
    cache_dir: if set, each (corruption, severity) is stored as
      `<cache_dir>/<corruption>_s<severity>_n<n>_seed<seed>_<hash>.npz`, the
      hash covering the split's content and the library version; a second
      call with the same arguments only reads those files.
    progress: show a progress bar over images.

  Returns:
    {corruption: {severity: Split}} with the first n images, labels unchanged.
  """
  names = resolve_names(names)
  severities = _check_severities(severities)
  per_corruption_max = dict(per_corruption_max or {})
  for n in per_corruption_max:
    check_choice("per_corruption_max key", n, ALL_CORRUPTIONS)
  total = len(split) if not max_images else min(int(max_images), len(split))
  counts = {n: min(total, int(per_corruption_max.get(n, total))) for n in names}
  key = content_hash(split)[:16] + "_" + _library_version()
  if cache_dir:
    cache_dir = os.path.expanduser(cache_dir)
    try:
      os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
      raise UserError(f"corruption cache_dir={cache_dir!r} cannot be created: "
                      f"{e.strerror}") from None

  def path(name, sev):
    return os.path.join(cache_dir, f"{name}_s{sev}_n{counts[name]}_seed{seed}_"
                        f"{key}.npz")

  todo = [(n, s) for n in names for s in severities
          if not (cache_dir and os.path.exists(path(n, s)))]
  bar = None
  if progress and todo:
    from tqdm.auto import tqdm
    bar = tqdm(total=sum(counts[n] for n, _ in todo), desc="corrupting",
               leave=False)
  out: Sets = {}
  try:
    for name in names:
      out[name] = {}
      sub = data.Split(split.images[:counts[name]], split.labels[:counts[name]])
      for sev in severities:
        if cache_dir and os.path.exists(path(name, sev)):
          with np.load(path(name, sev)) as f:
            out[name][sev] = data.Split(f["images"], f["labels"])
          continue
        if bar is not None:
          bar.set_postfix_str(f"{name} s{sev}")
        images = corrupt_images(sub.images, name, sev, seed,
                                bar.update if bar is not None else None)
        out[name][sev] = data.Split(images, sub.labels.copy())
        if cache_dir:
          tmp = path(name, sev)[:-4] + ".tmp.npz"
          np.savez(tmp, images=images, labels=sub.labels)
          os.replace(tmp, path(name, sev))
  finally:
    if bar is not None:
      bar.close()
  return out


# ---------------------------------------------------------- sets on disk
def load_cifar10_c(data_dir: str, names: str | Sequence[str] = "standard",
                   severities: Sequence[int] = SEVERITIES) -> Sets:
  """CIFAR-10-C through TFDS `cifar10_corrupted/<name>_<severity>` (10,000
  test images each), read from a prepared `data_dir`; nothing is downloaded."""
  names = resolve_names(names)
  severities = _check_severities(severities)
  data_dir = os.path.expanduser(data_dir)
  out: Sets = {}
  for name in names:
    out[name] = {}
    for sev in severities:
      config = f"cifar10_corrupted/{name}_{sev}"
      if not os.path.isdir(os.path.join(data_dir, config)):
        raise UserError(
            f"CIFAR-10-C set {config!r} not found in data_dir={data_dir!r}; "
            f"prepare it on a machine with internet (tfds build {config} "
            f"--data_dir={data_dir}) and copy the folder here, or use "
            "generated corruptions instead")
      out[name][sev] = datasets._tfds_read(config, data_dir, {"test": "test"})["test"]
  return out


def load_cifar100_c(root: str, names: str | Sequence[str] = "standard",
                    severities: Sequence[int] = SEVERITIES) -> Sets:
  """CIFAR-100-C (or CIFAR-10-C) in the release layout: `<root>/<name>.npy`,
  uint8 `[5 * n, 32, 32, 3]` with severity s in rows `[(s-1) n, s n)`, and
  `<root>/labels.npy` `[5 * n]`."""
  names = resolve_names(names)
  severities = _check_severities(severities)
  root = os.path.expanduser(root)
  how = ("download CIFAR-100-C from https://zenodo.org/record/3555552 and "
         "unpack it there")
  labels_path = os.path.join(root, "labels.npy")
  if not os.path.exists(labels_path):
    raise UserError(f"corruption set not found: {labels_path!r} is missing; {how}")
  labels = np.load(labels_path).astype(np.int32)
  if labels.shape[0] % 5:
    raise UserError(f"{labels_path!r} has {labels.shape[0]} labels, not 5 "
                    "severities of equal size")
  n = labels.shape[0] // 5
  out: Sets = {}
  for name in names:
    p = os.path.join(root, f"{name}.npy")
    if not os.path.exists(p):
      raise UserError(f"corruption set not found: {p!r} is missing; {how}")
    images = np.load(p, mmap_mode="r")
    if images.shape[0] != labels.shape[0] or images.ndim != 4:
      raise UserError(f"{p!r} has shape {images.shape}; expected "
                      f"[{labels.shape[0]}, H, W, C] like labels.npy")
    out[name] = {s: data.Split(np.asarray(images[(s - 1) * n:s * n], np.uint8),
                               labels[(s - 1) * n:s * n])
                 for s in severities}
  return out


def load_tiny_imagenet_c(root: str, names: str | Sequence[str] = "standard",
                         severities: Sequence[int] = SEVERITIES,
                         wnids: Sequence[str] | None = None) -> Sets:
  """Tiny-ImageNet-C folders `<root>/<name>/<severity>/<wnid>/*.JPEG`.

  Class index = position of the wnid in `wnids` (pass the training set's
  `wnids.txt` order, as `data` uses); default: sorted folder names, as
  torchvision's ImageFolder (and so most PyTorch checkpoints) numbers them.
  """
  from PIL import Image
  names = resolve_names(names)
  severities = _check_severities(severities)
  root = os.path.expanduser(root)
  how = ("download Tiny-ImageNet-C from https://zenodo.org/record/2536630 and "
         "unpack it there")
  out: Sets = {}
  for name in names:
    out[name] = {}
    for sev in severities:
      folder = os.path.join(root, name, str(sev))
      if not os.path.isdir(folder):
        raise UserError(f"corruption set not found: {folder!r} is missing; {how}")
      classes = list(wnids) if wnids is not None else sorted(os.listdir(folder))
      index = {w: i for i, w in enumerate(classes)}
      images, labels = [], []
      for w in sorted(os.listdir(folder)):
        if w not in index:
          raise UserError(f"{os.path.join(folder, w)!r} is not one of the "
                          f"{len(classes)} known classes")
        for fn in sorted(os.listdir(os.path.join(folder, w))):
          with Image.open(os.path.join(folder, w, fn)) as im:
            images.append(np.asarray(im.convert("RGB"), np.uint8))
          labels.append(index[w])
      if not images:
        raise UserError(f"no images under {folder!r}; {how}")
      out[name][sev] = data.Split(np.stack(images), np.asarray(labels, np.int32))
  return out


# ------------------------------------------------------- one OOD loader
SOURCES = ("generated", "cifar10_c", "cifar100_c", "tiny_imagenet_c")


def canonical_source(source: str, name: str = "ood.source") -> str:
  """`source`, checked against SOURCES."""
  check_choice(name, source, SOURCES)
  return source


def check_block(ood, prefix: str = "ood") -> tuple[tuple[str, ...], tuple[int, ...]]:
  """Validates an OOD config block (`configs/common.ood`); returns (corruption
  names, severities)."""
  canonical_source(ood.source, f"{prefix}.source")
  names = resolve_names(ood.corruptions)
  severities = _check_severities(ood.severities)
  if int(ood.get("max_images", 0)) < 0:
    raise UserError(f"{prefix}.max_images={ood.max_images} must be >= 0 "
                    "(0 = all images)")
  for n, v in dict(ood.get("per_corruption_max", {}) or {}).items():
    check_choice(f"{prefix}.per_corruption_max key", n, ALL_CORRUPTIONS)
    if int(v) < 1:
      raise UserError(f"{prefix}.per_corruption_max[{n!r}]={v} must be >= 1")
  return names, severities


def load_sets(ood, split: data.Split, *, data_dir: str, workdir: str, seed: int,
              prefix: str = "ood", progress: bool = True) -> Sets:
  """The corrupted sets an OOD config block asks for.

  'generated' corrupts the first `max_images` images of `split` (cached in
  `cache_dir`, default `<workdir>/ood_cache`); the other sources read the
  released sets from `root` (CIFAR-10-C through TFDS in `root` or
  `data_dir`).
  """
  names, severities = check_block(ood, prefix)
  source = canonical_source(ood.source, f"{prefix}.source")
  root = os.path.expanduser(ood.get("root", "") or "")
  if source == "cifar10_c":
    return load_cifar10_c(root or data_dir, names, severities)
  if source == "cifar100_c":
    return load_cifar100_c(root, names, severities)
  if source == "tiny_imagenet_c":
    return load_tiny_imagenet_c(root, names, severities)
  cache = os.path.expanduser(ood.get("cache_dir", "") or
                             os.path.join(workdir, "ood_cache"))
  return generate(split, names, severities,
                  max_images=int(ood.get("max_images", 0)) or None,
                  per_corruption_max=dict(ood.get("per_corruption_max", {}) or {}),
                  seed=seed, cache_dir=cache, progress=progress)


# ---------------------------------------------------------------- reports
def correctness_table(sets: Sets, correct_fn: Callable[[data.Split], np.ndarray],
                      progress: bool = True) -> dict[str, dict[int, np.ndarray]]:
  """`correct_fn(split) -> bool [n]` over every set: {corruption: {severity:
  bool [n]}}. All sets go through ONE call on their concatenation, so an
  evaluation pays for full batches instead of padding each small set (the
  demo's 95 sets of 200 images at batch 500 were 60 % padding)."""
  del progress  # one call: its own progress bar, if any
  cells = [(n, s) for n, by_sev in sets.items() for s in by_sev]
  if not cells:
    return {}
  splits = [sets[n][s] for n, s in cells]
  ok = np.asarray(correct_fn(concatenate(sets)), bool)
  out: dict[str, dict[int, np.ndarray]] = {n: {} for n in sets}
  start = 0
  for (n, s), sp in zip(cells, splits):
    out[n][s] = ok[start:start + len(sp)]
    start += len(sp)
  return out


def concatenate(sets: Sets) -> data.Split:
  """Every (corruption, severity) set in one split, in `sets` order."""
  splits = [sp for by_sev in sets.values() for sp in by_sev.values()]
  return data.Split(np.concatenate([sp.images for sp in splits]),
                    np.concatenate([sp.labels for sp in splits]))


def accuracy_of(table: Mapping[str, Mapping[int, np.ndarray]]
                ) -> dict[str, dict[int, float]]:
  """{corruption: {severity: bool [n]}} -> accuracy in percent."""
  return {n: {s: 100.0 * float(np.mean(v)) for s, v in by.items()}
          for n, by in table.items()}


def per_image(table: Mapping[str, Mapping[int, np.ndarray]],
              names: Sequence[str] | None = None) -> np.ndarray:
  """Correctness `[..., cells, n]` over the images all cells share (the
  first n; a cell's array is `[n]`, or `[seeds, n]` pooled): the input of a
  paired bootstrap of the mean OOD accuracy, images on the last axis
  (`rift_jax.evaluation.stats`). `names`: only these corruptions (default: all)."""
  cells = [v for c, by in table.items() if names is None or c in names
           for v in by.values()]
  n = min(v.shape[-1] for v in cells)
  return np.stack([v[..., :n] for v in cells], axis=-2)


def describe_set(names: Sequence[str]) -> str:
  """Names the averaged set: '15 standard types', 'all 19 ...', or a list."""
  names = tuple(names)
  if set(names) == set(STANDARD_15) and len(names) == 15:
    return "15 standard types (CIFAR-10-C / ImageNet-C)"
  if set(names) == set(RIFT_CODE_18) and len(names) == 18:
    return ("18 types as the official RiFT code (all 19 but glass_blur): "
            + ", ".join(names))
  if set(names) == set(ALL_CORRUPTIONS) and len(names) == 19:
    return "all 19 available: " + ", ".join(names)
  return f"{len(names)} types: " + ", ".join(names)


def summarize(acc: Mapping[str, Mapping[int, float]]) -> dict:
  """Accuracy `{corruption: {severity: acc}}` -> report.

  Returns {'set': description of the averaged types, 'mean': mean over all
  (corruption, severity) cells, 'per_corruption': mean over severities,
  'per_severity': mean over corruptions, 'per_family': mean over the cells of
  each family (noise/blur/weather/digital/extra), 'corruptions', 'severities'}.
  """
  if not acc or not any(acc.values()):
    raise UserError("no corruption accuracies to summarize")
  names = tuple(acc)
  cells = [(n, int(s), float(v)) for n, by in acc.items() for s, v in by.items()]
  severities = sorted({s for _, s, _ in cells})

  def mean(vals):
    vals = list(vals)
    return float(np.mean(vals)) if vals else float("nan")

  families = []
  for n in names:
    if FAMILIES.get(n, "other") not in families:
      families.append(FAMILIES.get(n, "other"))
  return {
      "set": describe_set(names),
      "mean": mean(v for _, _, v in cells),
      "per_corruption": {n: mean(acc[n].values()) for n in names},
      "per_severity": {s: mean(v for _, t, v in cells if t == s)
                       for s in severities},
      "per_family": {f: mean(v for n, _, v in cells
                             if FAMILIES.get(n, "other") == f)
                     for f in families},
      "corruptions": list(names),
      "severities": severities,
  }

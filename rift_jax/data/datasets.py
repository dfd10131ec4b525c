"""Data sets in memory, a validation split carved from train, on-device augmentation.

Every split is held as uint8 `[N, H, W, C]` plus int32 labels `[N]`; batches
come out as float32 in [0, 1]. Per-dataset mean/std live in `DatasetInfo` and
are applied inside the model, so attacks work in pixel space.

Sources:
- TFDS (`cifar10`, `cifar100`, `svhn_cropped`, `fashion_mnist`) from a
  configurable `data_dir`, never downloading: missing data is one clear error.
- `fashion_mnist` offline default (`data.source='debian'`): the IDX files of
  Debian's `dataset-fashion-mnist` package are turned into a TFDS data set
  (`fashion_mnist_debian`, version `DEBIAN_TFDS_VERSION`) once and then read
  through TFDS like any other. TFDS's own `fashion_mnist` builder cannot be
  used on them: the Debian files are re-compressed, so its registered
  checksums fail.
- `tiny_imagenet` from the original folder layout; validation labels come from
  `val/val_annotations.txt` (it serves as the test split, as usual).
- `synthetic`: generated class-conditional images for tests and benchmarks.

Order: every split keeps the order of the original files, as torchvision
reads them, so "the first N test images" (`evaluate.num_examples=N`) are the
same N images as in torchvision / RobustBench's `load_cifar10(n_examples=N)`.
TFDS shuffles examples when it writes a data set; on read they are sorted
back by an `index` feature (our Fashion-MNIST build stores each example's
position in the IDX file) or by the number in an `id` feature (TFDS's
CIFAR-10/100: 'train_16399', 'test_00123', counted over the original batch
files in order). A data set with neither (SVHN, CIFAR-10-C, TFDS's own
`fashion_mnist` with data.source='tfds') keeps TFDS's order.

Model selection everywhere uses `val` (carved from train with `split_seed`);
`test` is only reported.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import logging
import os
import re
import struct
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rift_jax.errors import UserError, check_choice, check_range

DATASET_NAMES = ("fashion_mnist", "cifar10", "cifar100", "svhn_cropped",
                 "tiny_imagenet", "synthetic")
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  crop_padding: int   # random-crop padding used by `augment` (0 = none)
  flip: bool          # horizontal flips are label-preserving


INFO = {
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 10, (0.2860,),
                                 (0.3530,), 2, True),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465),
                           (0.2471, 0.2435, 0.2616), 4, True),
    "cifar100": DatasetInfo("cifar100", (32, 32, 3), 100,
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            4, True),
    "svhn_cropped": DatasetInfo("svhn_cropped", (32, 32, 3), 10,
                                (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                                4, False),
    "tiny_imagenet": DatasetInfo("tiny_imagenet", (64, 64, 3), 200,
                                 (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821),
                                 8, True),
    "synthetic": DatasetInfo("synthetic", (16, 16, 1), 4, (0.5,), (0.25,), 2, True),
}


@dataclasses.dataclass
class Split:
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def take(self, idx: np.ndarray) -> "Split":
    return Split(self.images[idx], self.labels[idx])


@dataclasses.dataclass
class Dataset:
  info: DatasetInfo
  train: Split
  val: Split
  test: Split


# ----------------------------------------------------------------- IDX files
def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (gzip or raw) of unsigned bytes into an array."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise UserError(f"cannot read IDX file {path!r}: {e}") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
    raise UserError(f"{path!r} is not an IDX file of unsigned bytes")
  ndim = raw[3]
  dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise UserError(f"{path!r} is truncated: {data.size} values for shape {dims}")
  return data.reshape(dims)


def _fashion_mnist_from_idx(directory: str) -> dict[str, Split]:
  files = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
           "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
  out = {}
  for split, (img, lab) in files.items():
    paths = [os.path.join(directory, f) for f in (img, lab)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise UserError(
          f"Fashion-MNIST not found: {missing[0]!r} is missing. Install it with "
          "'apt-get install -y dataset-fashion-mnist' or set "
          "--config.data.debian_dir to a folder with the four IDX .gz files")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    out[split] = Split(images[..., None], labels.astype(np.int32))
  return out


# ------------------------------------------------------------------- TFDS
def _quiet_tf():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF only feeds data here
  import tensorflow as tf  # TFDS needs it; keep it off the accelerators.
  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):
    pass
  return tf


def _tfds_read(name: str, data_dir: str, splits: dict[str, str]) -> dict[str, Split]:
  tf = _quiet_tf()
  del tf
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # unknown name or unreadable folder
    raise UserError(f"TFDS data set {name!r} cannot be opened in data_dir="
                    f"{data_dir!r}: {str(e).splitlines()[0]}") from None
  if not builder.is_prepared():
    raise UserError(
        f"data set {name!r} is not prepared in data_dir={data_dir!r} and nothing "
        "is downloaded at run time; prepare it on a machine with internet "
        f"(tfds build {name} --data_dir=...) or put the archives in "
        f"{os.path.join(data_dir, 'downloads', 'manual')} and run tfds build there")
  out = {}
  for ours, theirs in splits.items():
    ds = tfds.as_numpy(builder.as_dataset(split=theirs, batch_size=-1))
    images = np.asarray(ds["image"], np.uint8)
    if images.ndim == 3:
      images = images[..., None]
    split = Split(images, np.asarray(ds["label"], np.int32))
    order = original_order(ds, f"{name} {theirs}")
    out[ours] = split if order is None else split.take(order)
  return out


_ID_NUMBER = re.compile(rb"(\d+)$")


def original_order(features: dict, where: str = "data set") -> np.ndarray | None:
  """Indices that sort a TFDS split (read as arrays) back into the original
  file order: by its integer `index` feature, or by the trailing number of
  its `id` strings (CIFAR: b'train_16399'); None if it has neither."""
  if "index" in features:
    keys = np.asarray(features["index"], np.int64)
  elif "id" in features:
    ids = [i if isinstance(i, bytes) else str(i).encode()
           for i in np.asarray(features["id"]).ravel()]
    found = [_ID_NUMBER.search(i) for i in ids]
    if not all(found):
      bad = ids[found.index(None)]
      raise UserError(f"{where}: id {bad!r} does not end in the example's "
                      "number, so the original order cannot be restored")
    keys = np.asarray([int(m[1]) for m in found], np.int64)
  else:
    return None
  order = np.argsort(keys, kind="stable")
  if np.any(np.diff(keys[order]) == 0):
    raise UserError(f"{where}: two examples have the same index/id number, so "
                    "the original order cannot be restored")
  return order


DEBIAN_TFDS_NAME = "fashion_mnist_debian"
# 1.1.0 stores the IDX position as `index` (1.0.0 builds, shuffled without it,
# are left alone and rebuilt under the new version).
DEBIAN_TFDS_VERSION = "1.1.0"


@contextlib.contextmanager
def _quiet_tfds_build():
  """Silences TFDS while it writes a data set: its 'Downloading and preparing
  dataset ...' / '... downloaded and prepared' lines (nothing is downloaded
  here), its progress bars and its absl INFO / WARNING logs."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.utils import tqdm_utils
  absl_logger = logging.getLogger("absl")
  level, bars = absl_logger.level, getattr(tqdm_utils, "_active", True)
  absl_logger.setLevel(logging.ERROR)
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()), \
        contextlib.redirect_stderr(io.StringIO()):
      yield
  finally:
    absl_logger.setLevel(level)
    tfds.display_progress_bar(bars)


def _build_fashion_mnist_tfds(debian_dir: str, data_dir: str) -> None:
  """Turns the Debian IDX files into the TFDS data set `fashion_mnist_debian`
  with features image, label and index (the position in the IDX file)."""
  tf = _quiet_tf()
  import tensorflow_datasets as tfds
  raw = _fashion_mnist_from_idx(debian_dir)
  try:
    os.makedirs(data_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"data.data_dir={data_dir!r} cannot be created: {e}") from None
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(28, 28, 1)),
      "label": tfds.features.ClassLabel(num_classes=10),
      "index": tfds.features.Scalar(dtype=np.int64,
                                    doc="position in the IDX file")})
  split_datasets = {
      k: tf.data.Dataset.from_tensor_slices({
          "image": v.images, "label": v.labels.astype(np.int64),
          "index": np.arange(len(v), dtype=np.int64)})
      for k, v in raw.items()}
  print(f"building the offline TFDS copy of Fashion-MNIST from {debian_dir} in "
        f"{data_dir} (once, ~1 min)", flush=True)
  with _quiet_tfds_build():
    tfds.dataset_builders.store_as_tfds_dataset(
        name=DEBIAN_TFDS_NAME, version=DEBIAN_TFDS_VERSION, features=features,
        split_datasets=split_datasets, data_dir=data_dir,
        disable_shuffling=True,  # written in file order; `index` is the proof
        description="Fashion-MNIST from Debian's dataset-fashion-mnist IDX "
        "files; `index` is the position in the IDX file.")


def _load_fashion_mnist_debian(debian_dir: str, data_dir: str) -> dict[str, Split]:
  """Fashion-MNIST train/test in IDX file order, through TFDS."""
  prepared = os.path.join(data_dir, DEBIAN_TFDS_NAME, DEBIAN_TFDS_VERSION,
                          "dataset_info.json")
  if not os.path.exists(prepared):
    _build_fashion_mnist_tfds(debian_dir, data_dir)
  return _tfds_read(f"{DEBIAN_TFDS_NAME}:{DEBIAN_TFDS_VERSION}", data_dir,
                    {"train": "train", "test": "test"})


# ------------------------------------------------------------ Tiny-ImageNet
def _load_tiny_imagenet(root: str) -> dict[str, Split]:
  """Folder layout of tiny-imagenet-200; val labels from val_annotations.txt."""
  from PIL import Image
  wnids_file = os.path.join(root, "wnids.txt")
  if not os.path.exists(wnids_file):
    raise UserError(f"Tiny-ImageNet not found: {wnids_file!r} is missing; set "
                    "--config.data.data_dir to the tiny-imagenet-200 folder")
  with open(wnids_file) as f:
    wnids = [w.strip() for w in f if w.strip()]
  index = {w: i for i, w in enumerate(wnids)}

  def load(paths):
    return np.stack([np.asarray(Image.open(p).convert("RGB"), np.uint8)
                     for p in paths])

  train_paths, train_labels = [], []
  for w in wnids:
    folder = os.path.join(root, "train", w, "images")
    for fn in sorted(os.listdir(folder)):
      train_paths.append(os.path.join(folder, fn))
      train_labels.append(index[w])
  val_paths, val_labels = [], []
  with open(os.path.join(root, "val", "val_annotations.txt")) as f:
    for line in f:
      parts = line.strip().split("\t")
      if len(parts) < 2:
        continue
      if parts[1] not in index:
        raise UserError(f"val_annotations.txt names class {parts[1]!r}, "
                        "which is not in wnids.txt")
      val_paths.append(os.path.join(root, "val", "images", parts[0]))
      val_labels.append(index[parts[1]])
  return {"train": Split(load(train_paths), np.asarray(train_labels, np.int32)),
          "test": Split(load(val_paths), np.asarray(val_labels, np.int32))}


# --------------------------------------------------------------- synthetic
def synthetic_splits(num_train: int = 512, num_test: int = 256, seed: int = 0,
                     info: DatasetInfo = INFO["synthetic"]) -> dict[str, Split]:
  """Class-conditional images: each class is a fixed random pattern plus noise."""
  rng = np.random.default_rng(seed)
  h, w, c = info.image_shape
  protos = rng.uniform(0.2, 0.8, (info.num_classes, h, w, c))

  def make(n):
    labels = rng.integers(0, info.num_classes, n).astype(np.int32)
    images = protos[labels] + rng.normal(0, 0.15, (n, h, w, c))
    return Split(np.clip(images * 255, 0, 255).astype(np.uint8), labels)
  return {"train": make(num_train), "test": make(num_test)}


# ------------------------------------------------------------------ entry
def _subsample(split: Split, size: int, seed: int) -> Split:
  if not size or size >= len(split):
    return split
  idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:size])
  return split.take(idx)


def load(cfg) -> Dataset:
  """Loads `cfg.data` (a ConfigDict): name, source, data_dir, val_size, sizes."""
  name = cfg.name
  check_choice("data.name", name, DATASET_NAMES)
  check_range("data.val_size", cfg.val_size, 1)
  data_dir = os.path.expanduser(cfg.get("data_dir") or "~/tensorflow_datasets")
  if name == "fashion_mnist" and cfg.get("source", "debian") == "debian":
    raw = _load_fashion_mnist_debian(cfg.get("debian_dir", DEBIAN_FASHION_MNIST),
                                     data_dir)
  elif name == "tiny_imagenet":
    raw = _load_tiny_imagenet(data_dir)
  elif name == "synthetic":
    raw = synthetic_splits(seed=cfg.get("split_seed", 0))
  else:
    test = {"svhn_cropped": "test"}.get(name, "test")
    raw = _tfds_read(name, data_dir, {"train": "train", "test": test})
  return split_dataset(INFO[name], raw, val_size=int(cfg.val_size),
                       train_size=int(cfg.get("train_size", 0) or 0),
                       test_size=int(cfg.get("test_size", 0) or 0),
                       split_seed=int(cfg.get("split_seed", 0)))


def split_dataset(info: DatasetInfo, raw: dict[str, Split], *, val_size: int,
                  train_size: int = 0, test_size: int = 0, split_seed: int = 0
                  ) -> Dataset:
  """Carves a seeded validation split out of train, then subsamples if asked."""
  train = raw["train"]
  if val_size >= len(train):
    raise UserError(f"data.val_size={val_size} must be smaller than the "
                    f"{len(train)} training images")
  perm = np.random.default_rng(split_seed).permutation(len(train))
  val = train.take(np.sort(perm[:val_size]))
  train = train.take(np.sort(perm[val_size:]))
  train = _subsample(train, train_size, split_seed + 1)
  test = _subsample(raw["test"], test_size, split_seed + 2)
  return Dataset(info, train, val, test)


# ---------------------------------------------------------------- batches
def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [0, 1]; float images (e.g. adversarial
  examples, already in [0, 1]) pass through unscaled."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  return images.astype(np.float32)


def train_batches(split: Split, batch_size: int, seed: int, epoch: int,
                  rows: slice = slice(None)
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Shuffled full batches; the order depends only on (seed, epoch), so a
  resumed run sees exactly the batches an uninterrupted one would.

  `rows` picks this process's part of each global batch of `batch_size`
  (multi-host, `sharding.process_rows`); only those images are read.
  """
  perm = np.random.default_rng([seed, epoch]).permutation(len(split))
  for i in range(len(split) // batch_size):
    idx = perm[i * batch_size:(i + 1) * batch_size][rows]
    yield to_float(split.images[idx]), split.labels[idx]


def eval_batches(split: Split, batch_size: int, rows: slice = slice(None)
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Fixed-size batches in order with a validity mask; the last one is padded
  (so the evaluator compiles once). `rows`: this process's part of each
  global batch, as in `train_batches`."""
  n = len(split)
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    pad = batch_size - idx.size
    mask = np.concatenate([np.ones(idx.size, bool), np.zeros(pad, bool)])[rows]
    idx = np.concatenate([idx, np.full(pad, idx[0])])[rows]
    yield to_float(split.images[idx]), split.labels[idx], mask


# ------------------------------------------------------- device augmentation
def augment(rng: jax.Array, x: jax.Array, crop_padding: int, flip: bool) -> jax.Array:
  """Random crop with zero padding and random horizontal flip, per example.

  x: `[batch, H, W, C]`. Traceable: runs inside the compiled train step.
  """
  b, h, w, _ = x.shape
  k_crop, k_flip = jax.random.split(rng)
  if crop_padding > 0:
    p = crop_padding
    padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * p + 1)

    def crop(img, off):
      return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
    x = jax.vmap(crop)(padded, offsets)
  if flip:
    do = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    x = jnp.where(do, x[:, :, ::-1, :], x)
  return x

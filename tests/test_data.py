"""Loaders: IDX → TFDS (the Debian Fashion-MNIST path), the original file
order through TFDS, Tiny-ImageNet folders, validation split, on-device
augmentation, missing-data errors."""
from __future__ import annotations

import gzip
import logging
import os
import struct

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rift_jax import data
from rift_jax.data import datasets
from rift_jax.errors import UserError

FMNIST = os.environ.get("FASHION_MNIST_DIR", data.DEBIAN_FASHION_MNIST)


def _write_idx(path, arr):
  header = bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + arr.astype(np.uint8).tobytes())


def _fake_fashion_mnist(folder, n_train=40, n_test=20, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    _write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), imgs)
    _write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels)
    out[split] = (imgs, labels)
  return out


def test_read_idx_round_trip(tmp_path):
  arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  _write_idx(str(tmp_path / "a.gz"), arr)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "a.gz")), arr)
  (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01abcd"))
  with pytest.raises(UserError, match="not an IDX file"):
    data.read_idx(str(tmp_path / "bad.gz"))


def test_fashion_mnist_from_debian_files_through_tfds(tmp_path, capsys, caplog):
  debian = tmp_path / "debian"
  debian.mkdir()
  raw = _fake_fashion_mnist(str(debian))
  cfg = ml_collections.ConfigDict(dict(
      name="fashion_mnist", source="debian", data_dir=str(tmp_path / "tfds"),
      debian_dir=str(debian), val_size=10, split_seed=3))
  caplog.set_level(logging.INFO, logger="absl")
  ds = data.load(cfg)
  # One line of ours, none of TFDS's "Downloading and preparing dataset ...
  # downloaded and prepared" (nothing is downloaded), no progress bars.
  out = capsys.readouterr()
  assert out.out == (f"building the offline TFDS copy of Fashion-MNIST from "
                     f"{debian} in {tmp_path / 'tfds'} (once, ~1 min)\n")
  assert out.err == ""
  assert not [r for r in caplog.records if "prepar" in r.getMessage()
              or "Generating" in r.getMessage()]
  assert (tmp_path / "tfds" / data.DEBIAN_TFDS_NAME /
          data.DEBIAN_TFDS_VERSION).is_dir()
  assert ds.train.images.shape == (30, 28, 28, 1) and ds.train.images.dtype == np.uint8
  assert ds.val.images.shape == (10, 28, 28, 1)
  # The test split in IDX file order; train and val are the IDX train
  # images in file order, split by the seeded permutation.
  np.testing.assert_array_equal(ds.test.images[..., 0], raw["test"][0])
  np.testing.assert_array_equal(ds.test.labels, raw["test"][1])
  perm = np.random.default_rng(3).permutation(40)
  for split, idx in ((ds.val, np.sort(perm[:10])), (ds.train, np.sort(perm[10:]))):
    np.testing.assert_array_equal(split.images[..., 0], raw["train"][0][idx])
    np.testing.assert_array_equal(split.labels, raw["train"][1][idx])
  x, y = next(data.train_batches(ds.train, 8, seed=0, epoch=1))
  assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
  # Built once: the second load prints nothing.
  data.load(cfg)
  assert capsys.readouterr().out == ""


@pytest.mark.skipif(not os.path.exists(os.path.join(
    FMNIST, "t10k-images-idx3-ubyte.gz")), reason=f"Fashion-MNIST is not in "
    f"{FMNIST} (apt-get install dataset-fashion-mnist or make data)")
def test_real_fashion_mnist_keeps_the_idx_file_order():
  # The configs' own TFDS folder: the copy `make demo` (and CI's smoke demo)
  # built is the one checked, and a machine without it builds it once here.
  # TFDS's shuffled 1.0.0 build kept 1 of the first 1,000 test images in its
  # IDX position.
  from configs import common
  raw = datasets._load_fashion_mnist_debian(
      FMNIST, os.path.expanduser(common.base_config().data.data_dir))
  for split, prefix in (("test", "t10k"), ("train", "train")):
    images = data.read_idx(os.path.join(FMNIST, f"{prefix}-images-idx3-ubyte.gz"))
    labels = data.read_idx(os.path.join(FMNIST, f"{prefix}-labels-idx1-ubyte.gz"))
    assert len(raw[split]) == len(labels)
    np.testing.assert_array_equal(raw[split].images[..., 0], images)
    np.testing.assert_array_equal(raw[split].labels, labels)


def _fake_tfds_cifar10(data_dir, sizes):
  """A TFDS 'cifar10' with TFDS's features (id, image, label) and the id
  numbers written into pixel (0, 0): TFDS shuffles it on write, as the real
  one."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  features = tfds.features.FeaturesDict({
      "id": tfds.features.Text(), "image": tfds.features.Image(shape=(32, 32, 3)),
      "label": tfds.features.ClassLabel(num_classes=10)})

  def split(name, n):
    idx = np.arange(n)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = idx % 256, idx // 256
    return tf.data.Dataset.from_tensor_slices({
        "id": [f"{name}_{i:05d}".encode() for i in idx], "image": images,
        "label": (idx * 7 % 10).astype(np.int64)})
  with datasets._quiet_tfds_build():
    tfds.dataset_builders.store_as_tfds_dataset(
        name="cifar10", version=str(tfds.builder("cifar10").version),
        features=features, split_datasets={k: split(k, n) for k, n in sizes.items()},
        data_dir=str(data_dir))
  return tfds


def test_tfds_cifar_is_read_in_the_original_order_by_its_id(tmp_path):
  tfds = _fake_tfds_cifar10(tmp_path, {"train": 300, "test": 260})
  stored = tfds.as_numpy(tfds.builder("cifar10", data_dir=str(tmp_path))
                         .as_dataset(split="test", batch_size=-1))["id"]
  assert list(stored) != sorted(stored)  # TFDS did shuffle: the test means something
  cfg = ml_collections.ConfigDict(dict(name="cifar10", source="tfds",
                                       data_dir=str(tmp_path), val_size=50))
  ds = data.load(cfg)
  number = lambda s: (s.images[:, 0, 0, 0].astype(int)
                      + 256 * s.images[:, 0, 0, 1].astype(int))
  # The first N test images are the first N of the file (torchvision's order).
  np.testing.assert_array_equal(number(ds.test), np.arange(260))
  np.testing.assert_array_equal(ds.test.labels, np.arange(260) * 7 % 10)
  assert np.all(np.diff(number(ds.train)) > 0) and np.all(np.diff(number(ds.val)) > 0)
  assert len(ds.train) + len(ds.val) == 300


def test_original_order_by_index_or_id_and_bad_ids():
  np.testing.assert_array_equal(data.original_order({"index": [2, 0, 1]}), [1, 2, 0])
  ids = np.array([b"train_00010", b"train_00002", b"train_00003"], object)
  np.testing.assert_array_equal(data.original_order({"id": ids}), [1, 2, 0])
  assert data.original_order({"image": np.zeros(3)}) is None
  with pytest.raises(UserError, match="does not end in the example's number"):
    data.original_order({"id": np.array([b"a_1", b"b"], object)}, "x")
  with pytest.raises(UserError, match="same index/id number"):
    data.original_order({"id": np.array([b"train_1", b"test_1"], object)}, "x")


def test_missing_data_is_one_clear_error(tmp_path):
  cfg = ml_collections.ConfigDict(dict(
      name="fashion_mnist", source="debian", data_dir=str(tmp_path / "t"),
      debian_dir=str(tmp_path / "nowhere"), val_size=10))
  with pytest.raises(UserError, match="apt-get install -y dataset-fashion-mnist"):
    data.load(cfg)
  cfg = ml_collections.ConfigDict(dict(name="cifar10", source="tfds",
                                       data_dir=str(tmp_path / "t"), val_size=10))
  with pytest.raises(UserError, match=r"'cifar10' is not prepared in data_dir="):
    data.load(cfg)
  cfg.name = "imagenet"
  with pytest.raises(UserError, match=r"data.name='imagenet' is not allowed"):
    data.load(cfg)


def test_tiny_imagenet_val_labels_come_from_annotations(tmp_path):
  from PIL import Image
  root = tmp_path / "tiny-imagenet-200"
  wnids = ["n01443537", "n01629819", "n01641577"]
  (root / "val" / "images").mkdir(parents=True)
  (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
  for c, w in enumerate(wnids):
    d = root / "train" / w / "images"
    d.mkdir(parents=True)
    for i in range(2):
      Image.fromarray(np.full((64, 64, 3), 10 * c + i, np.uint8)).save(d / f"{w}_{i}.JPEG")
  # Val images named in an order unrelated to their classes.
  ann = [("val_0.JPEG", wnids[2]), ("val_1.JPEG", wnids[0]), ("val_2.JPEG", wnids[2]),
         ("val_3.JPEG", wnids[1])]
  for fn, w in ann:
    Image.fromarray(np.full((64, 64, 3), 100 + wnids.index(w), np.uint8)).save(
        root / "val" / "images" / fn)
  (root / "val" / "val_annotations.txt").write_text(
      "".join(f"{fn}\t{w}\t0\t0\t63\t63\n" for fn, w in ann))
  cfg = ml_collections.ConfigDict(dict(name="tiny_imagenet", data_dir=str(root),
                                       val_size=2))
  ds = data.load(cfg)
  np.testing.assert_array_equal(ds.test.labels, [2, 0, 2, 1])
  assert ds.test.images.shape == (4, 64, 64, 3)
  assert len(ds.train) + len(ds.val) == 6
  # Pixel value 100 + class was written into each val image (JPEG is lossy).
  np.testing.assert_allclose(ds.test.images.mean(axis=(1, 2, 3)) - 100, [2, 0, 2, 1],
                             atol=1.5)


def test_validation_split_is_seeded_and_disjoint():
  raw = data.synthetic_splits(num_train=100, num_test=10, seed=1)
  a = data.split_dataset(data.INFO["synthetic"], raw, val_size=20, split_seed=5)
  b = data.split_dataset(data.INFO["synthetic"], raw, val_size=20, split_seed=5)
  c = data.split_dataset(data.INFO["synthetic"], raw, val_size=20, split_seed=6)
  np.testing.assert_array_equal(a.val.images, b.val.images)
  assert not np.array_equal(a.val.images, c.val.images)
  tr = {x.tobytes() for x in a.train.images}
  assert not any(x.tobytes() in tr for x in a.val.images)
  assert len(a.train) == 80
  with pytest.raises(UserError, match="val_size=100 must be smaller"):
    data.split_dataset(data.INFO["synthetic"], raw, val_size=100)


def test_eval_batches_pad_and_mask():
  split = data.Split(np.zeros((10, 2, 2, 1), np.uint8), np.arange(10, dtype=np.int32))
  batches = list(data.eval_batches(split, 4))
  assert [b[0].shape[0] for b in batches] == [4, 4, 4]
  assert batches[-1][2].tolist() == [True, True, False, False]
  assert np.concatenate([b[1][b[2]] for b in batches]).tolist() == list(range(10))


def test_augment_crops_and_flips_only():
  x = jnp.arange(2 * 4 * 4, dtype=jnp.float32).reshape(2, 4, 4, 1) + 1
  same = data.augment(jax.random.PRNGKey(0), x, 0, False)
  np.testing.assert_array_equal(same, x)
  flipped = np.asarray(data.augment(jax.random.PRNGKey(1), x, 0, True))
  for i in range(2):
    assert (np.array_equal(flipped[i], x[i]) or
            np.array_equal(flipped[i], x[i, :, ::-1]))
  cropped = np.asarray(data.augment(jax.random.PRNGKey(2), x, 1, False))
  padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  for i in range(2):
    windows = [padded[i, a:a + 4, b:b + 4] for a in range(3) for b in range(3)]
    assert any(np.array_equal(cropped[i], w) for w in windows)

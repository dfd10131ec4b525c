"""Corrupted test sets: generation, caching, on-disk loaders, summaries."""
import os

import numpy as np
import pytest

from rift_jax import data
from rift_jax.data import corruptions
from rift_jax.errors import UserError


def _gray_split(n=6, size=28, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
  return data.Split(images, rng.integers(0, 10, n).astype(np.int32))


def test_name_sets():
  assert len(corruptions.ALL_CORRUPTIONS) == 19
  assert len(corruptions.STANDARD_15) == 15
  assert "glass_blur" not in corruptions.RIFT_CODE_18
  assert len(corruptions.RIFT_CODE_18) == 18
  assert set(corruptions.FAMILIES) == set(corruptions.ALL_CORRUPTIONS)
  fams = [corruptions.FAMILIES[n] for n in corruptions.STANDARD_15]
  assert fams.count("noise") == 3 and fams.count("blur") == 4
  assert fams.count("weather") == 4 and fams.count("digital") == 4
  import imagecorruptions
  assert tuple(imagecorruptions.get_corruption_names("all")) == \
      corruptions.ALL_CORRUPTIONS


def test_generate_grayscale_shape_determinism_and_cache(tmp_path):
  split = _gray_split()
  names = ["gaussian_noise", "impulse_noise", "brightness", "zoom_blur"]
  a = corruptions.generate(split, names, (1, 5), seed=3, cache_dir=str(tmp_path),
                           progress=False)
  for n in names:
    for s in (1, 5):
      assert a[n][s].images.shape == (6, 28, 28, 1)
      assert a[n][s].images.dtype == np.uint8
      np.testing.assert_array_equal(a[n][s].labels, split.labels)
      assert not np.array_equal(a[n][s].images, split.images)
  # Severity 5 noise moves pixels further than severity 1.
  d = lambda s: np.abs(a["gaussian_noise"][s].images.astype(int)
                       - split.images.astype(int)).mean()
  assert d(5) > d(1)
  # Same seed, no cache: identical (numpy's global RNG and the seed kwargs).
  b = corruptions.generate(split, names, (1, 5), seed=3, progress=False)
  c = corruptions.generate(split, names, (1, 5), seed=4, progress=False)
  for n in names:
    np.testing.assert_array_equal(a[n][5].images, b[n][5].images)
  assert not np.array_equal(a["gaussian_noise"][5].images,
                            c["gaussian_noise"][5].images)
  # Image i does not depend on how many images were asked for.
  d2 = corruptions.generate(split, ["impulse_noise"], (5,), seed=3, max_images=2,
                            progress=False)
  np.testing.assert_array_equal(d2["impulse_noise"][5].images,
                                a["impulse_noise"][5].images[:2])
  # The cache is read back, not regenerated: poison a file and see it returned.
  files = sorted(os.listdir(tmp_path))
  assert len(files) == 8 and all(f.endswith(".npz") for f in files)
  target = [f for f in files if f.startswith("brightness_s1_")][0]
  np.savez(tmp_path / target, images=np.zeros((6, 28, 28, 1), np.uint8),
           labels=split.labels)
  e = corruptions.generate(split, ["brightness"], (1,), seed=3,
                           cache_dir=str(tmp_path), progress=False)
  assert e["brightness"][1].images.max() == 0
  # Other content -> other cache key.
  other = _gray_split(seed=1)
  f = corruptions.generate(other, ["brightness"], (1,), seed=3,
                           cache_dir=str(tmp_path), progress=False)
  assert f["brightness"][1].images.max() > 0


def test_brightness_matches_library_on_rgb32_and_gray_is_luma():
  # On a 32x32 RGB image nothing is padded: exactly the library's output.
  import imagecorruptions
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  ours = corruptions.corrupt_image(img, "brightness", 3, seed=0)
  np.testing.assert_array_equal(
      ours, imagecorruptions.corrupt(img, 3, "brightness"))
  # A constant gray image brightened stays gray and gets brighter.
  gray = np.full((28, 28, 1), 100, np.uint8)
  out = corruptions.corrupt_image(gray, "brightness", 5, seed=0)
  assert out.shape == (28, 28, 1)
  assert np.all(out == out[0, 0, 0]) and out[0, 0, 0] > 100


def test_per_corruption_max_and_bad_names():
  split = _gray_split(n=4, size=16)
  out = corruptions.generate(split, ["contrast", "pixelate"], (2,),
                             per_corruption_max={"pixelate": 1}, progress=False)
  assert len(out["contrast"][2]) == 4 and len(out["pixelate"][2]) == 1
  assert out["pixelate"][2].images.shape == (1, 16, 16, 1)
  with pytest.raises(UserError, match="gausian_noise.*gaussian_noise"):
    corruptions.generate(split, ["gausian_noise"], progress=False)
  with pytest.raises(UserError, match="severity=6"):
    corruptions.generate(split, ["contrast"], (6,), progress=False)
  assert corruptions.resolve_names("standard") == corruptions.STANDARD_15
  assert corruptions.resolve_names("fog, snow") == ("fog", "snow")


def test_load_cifar100_c_layout(tmp_path):
  n = 3
  images = np.arange(5 * n * 32 * 32 * 3, dtype=np.int64).reshape(5 * n, 32, 32, 3)
  images = (images % 251).astype(np.uint8)
  labels = np.tile(np.arange(n), 5).astype(np.int64)
  np.save(tmp_path / "labels.npy", labels)
  np.save(tmp_path / "fog.npy", images)
  sets = corruptions.load_cifar100_c(str(tmp_path), ["fog"], (2, 5))
  np.testing.assert_array_equal(sets["fog"][2].images, images[n:2 * n])
  np.testing.assert_array_equal(sets["fog"][5].images, images[4 * n:])
  np.testing.assert_array_equal(sets["fog"][5].labels, np.arange(n))
  with pytest.raises(UserError, match="snow.npy.*missing"):
    corruptions.load_cifar100_c(str(tmp_path), ["snow"])
  with pytest.raises(UserError, match="labels.npy"):
    corruptions.load_cifar100_c(str(tmp_path / "nowhere"), ["fog"])


def test_load_tiny_imagenet_c_layout(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  expected = {}
  for wnid in ("n02", "n01"):
    folder = tmp_path / "fog" / "3" / wnid
    folder.mkdir(parents=True)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(img).save(folder / "a.png")  # lossless for the check
    expected[wnid] = img
  sets = corruptions.load_tiny_imagenet_c(str(tmp_path), ["fog"], (3,))
  s = sets["fog"][3]
  assert s.images.shape == (2, 64, 64, 3)
  # Default numbering = sorted wnids (ImageFolder): n01 -> 0, n02 -> 1.
  np.testing.assert_array_equal(s.labels, [0, 1])
  np.testing.assert_array_equal(s.images[0], expected["n01"])
  s2 = corruptions.load_tiny_imagenet_c(str(tmp_path), ["fog"], (3,),
                                        wnids=["n02", "n01"])["fog"][3]
  np.testing.assert_array_equal(s2.labels, [1, 0])
  with pytest.raises(UserError, match="fog/1.*missing"):
    corruptions.load_tiny_imagenet_c(str(tmp_path), ["fog"], (1,))


def test_load_cifar10_c_missing_says_where_and_how(tmp_path):
  with pytest.raises(UserError, match=r"cifar10_corrupted/fog_1.*tfds build"):
    corruptions.load_cifar10_c(str(tmp_path), ["fog"], (1,))


def test_summarize_hand_values():
  acc = {"gaussian_noise": {1: 80.0, 2: 60.0},
         "fog": {1: 70.0, 2: 50.0},
         "spatter": {1: 90.0, 2: 90.0}}
  r = corruptions.summarize(acc)
  assert r["mean"] == pytest.approx(440 / 6)
  assert r["per_corruption"] == {"gaussian_noise": 70.0, "fog": 60.0,
                                 "spatter": 90.0}
  assert r["per_severity"] == {1: 80.0, 2: pytest.approx(200 / 3)}
  assert r["per_family"] == {"noise": 70.0, "weather": 60.0, "extra": 90.0}
  assert r["set"].startswith("3 types: gaussian_noise, fog, spatter")
  std = corruptions.summarize({n: {1: 1.0} for n in corruptions.STANDARD_15})
  assert std["set"].startswith("15 standard types")
  every = corruptions.summarize({n: {1: 1.0} for n in corruptions.ALL_CORRUPTIONS})
  assert every["set"].startswith("all 19 available: gaussian_noise")


def test_spatter_without_drops_is_not_black():
  # The library divides by zero when no drop lands on a small image (NaN ->
  # black); light spatter only adds water, so no pixel may get darker.
  rng = np.random.default_rng(0)
  split = data.Split(rng.integers(100, 200, (40, 28, 28, 1), dtype=np.uint8),
                     np.zeros(40, np.int32))
  out = corruptions.generate(split, ["spatter"], (1,), progress=False)
  assert out["spatter"][1].images.min() >= 99

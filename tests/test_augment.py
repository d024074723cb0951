"""Random crop (zero padding) + horizontal flip: exact against numpy slicing."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sglr_jax.data import augment


def _images(n=32, h=32, seed=0):
  """uint8 images with every pixel in [1, 255], so zero padding is recognisable."""
  return np.random.default_rng(seed).integers(1, 256, (n, h, h, 3), dtype=np.uint8)


def _recover(out, image, padding):
  """All (dy, dx, flipped) with ``out`` == the numpy crop of the padded image."""
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  s = out.shape[0]
  found = []
  for dy in range(padded.shape[0] - s + 1):
    for dx in range(padded.shape[1] - s + 1):
      crop = padded[dy:dy + s, dx:dx + s]
      for flipped, cand in ((False, crop), (True, crop[:, ::-1])):
        if np.array_equal(cand, out):
          found.append((dy, dx, flipped))
  return found


@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
def test_shape_and_dtype_kept(dtype):
  x = _images().astype(dtype)  # one batch shape for the whole file: fewer compiles
  out = augment.augment_batch(jax.random.key(0), jnp.asarray(x))
  assert out.shape == x.shape and out.dtype == dtype


def test_crop_is_shifted_window_of_zero_padded_image():
  x = _images()
  out = np.asarray(augment.augment_batch(jax.random.key(1), jnp.asarray(x)))
  offsets, flips = [], []
  for o, img in zip(out, x):
    found = _recover(o, img, 4)
    assert len(found) == 1, found  # exactly one window (pixels are random and non-zero)
    dy, dx, flipped = found[0]
    offsets.append((dy, dx))
    flips.append(flipped)
    # Zeros appear exactly where the window overlaps the padding.
    rows, cols = np.arange(32)[:, None] + dy, np.arange(32)[None, :] + dx
    pad = (rows < 4) | (rows >= 36) | (cols < 4) | (cols >= 36)
    pad = pad[:, ::-1] if flipped else pad
    assert ((o == 0).all(-1) == pad).all()
  dys = {d for d, _ in offsets}
  dxs = {d for _, d in offsets}
  assert len(dys) >= 6 and len(dxs) >= 6 and dys <= set(range(9)) and dxs <= set(range(9))
  assert 6 <= sum(flips) <= 26  # a fair coin on 32 draws


def test_offsets_cover_the_full_range():
  """All 9 offsets (0..2*padding) occur on each axis; recovered from single-pixel images."""
  n = 512
  x = np.zeros((n, 32, 32, 1), np.float32)
  x[:, 16, 16, 0] = 1.0  # pixel (16, 16) lands at (20 - dy, 20 - dx) in the crop
  out = np.asarray(augment.augment_batch(jax.random.key(2), jnp.asarray(x), flip=False))
  ys, xs = [], []
  for o in out:
    pos = np.argwhere(o[..., 0] == 1.0)
    assert len(pos) == 1 and o.sum() == 1.0
    ys.append(20 - pos[0][0])
    xs.append(20 - pos[0][1])
  assert set(ys) == set(range(9)) and set(xs) == set(range(9))
  counts = np.bincount(ys, minlength=9)
  assert counts.min() > n / 9 / 2  # roughly uniform


def test_flip_is_exact():
  x = _images(32)
  out = np.asarray(augment.augment_batch(jax.random.key(3), jnp.asarray(x), padding=0))
  same = [np.array_equal(o, i) for o, i in zip(out, x)]
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x)]
  assert all(a != b for a, b in zip(same, flipped))  # exactly one of the two, bit-exact
  assert 0 < sum(flipped) < 32
  ident = augment.augment_batch(jax.random.key(3), jnp.asarray(x), padding=0, flip=False)
  np.testing.assert_array_equal(ident, x)


def test_same_key_same_batch_other_key_other_batch():
  x = jnp.asarray(_images())
  a = augment.augment_batch(jax.random.key(7), x)
  b = augment.augment_batch(jax.random.key(7), x)
  c = augment.augment_batch(jax.random.key(8), x)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_dtype_does_not_change_the_draw():
  """uint8 and [0, 1] float versions of a batch get the same crops and flips."""
  x = _images()
  a = augment.augment_batch(jax.random.key(4), jnp.asarray(x))
  b = augment.augment_batch(jax.random.key(4), jnp.asarray(x, jnp.float32) / 255.0)
  np.testing.assert_allclose(np.asarray(a, np.float32) / 255.0, b, rtol=0, atol=1e-7)


def test_per_example_vmap_matches_batch():
  """The training step vmaps augment_one over per-example keys; augment_batch does the same."""
  x = jnp.asarray(_images())
  key = jax.random.key(5)
  ref = augment.augment_batch(key, x)
  per = jax.vmap(augment.augment_one)(jax.random.split(key, 32), x)
  np.testing.assert_array_equal(ref, per)
  np.testing.assert_array_equal(augment.augment_one(jax.random.split(key, 32)[3], x[3]), ref[3])


def test_crop_size_and_padding_arguments():
  x = _images(4)
  out = np.asarray(augment.augment_batch(jax.random.key(6), jnp.asarray(x), padding=2,
                                         crop_size=28))
  assert out.shape == (4, 28, 28, 3)
  for o, img in zip(out, x):
    found = _recover(o, img, 2)
    assert len(found) == 1 and all(0 <= d <= 8 for d in found[0][:2])
  with pytest.raises(ValueError, match='crop_size'):
    augment.augment_batch(jax.random.key(6), jnp.asarray(x), padding=0, crop_size=33)

"""Label noise: realised rates, determinism, clean labels untouched, flip structure."""
from __future__ import annotations

import numpy as np
import pytest

from sglr_jax.data import noise

N = 200_000  # binomial std of a rate estimate ~0.1%: a 1% tolerance is > 5 sigma


def _labels(k, n=N, seed=123):
  return np.random.default_rng(seed).integers(0, k, n).astype(np.int32)


@pytest.mark.parametrize('k,rate', [(10, 0.4), (10, 0.8), (100, 0.2), (2, 1.0)])
def test_symmetric_realised_rate(k, rate):
  y = _labels(k)
  noisy = noise.symmetric_noise(y, k, rate, seed=0)
  changed = np.mean(noisy != y)
  # Resampling over all K classes keeps the label with prob. 1/K.
  assert abs(changed - rate * (k - 1) / k) < 0.01
  assert abs(changed * k / (k - 1) - rate) < 0.01  # the resample rate itself
  assert noisy.dtype == np.int32 and noisy.shape == y.shape
  assert noisy.min() >= 0 and noisy.max() < k


def test_symmetric_new_labels_are_uniform_over_other_classes():
  k = 10
  y = _labels(k)
  noisy = noise.symmetric_noise(y, k, 0.5, seed=1)
  moved = noisy != y
  for c in range(k):
    dest = np.bincount(noisy[moved & (y == c)], minlength=k) / np.sum(moved & (y == c))
    assert dest[c] == 0
    np.testing.assert_allclose(np.delete(dest, c), 1 / (k - 1), atol=0.015)


def test_symmetric_seed_determinism_and_clean_labels_untouched():
  y = _labels(10, n=5000)
  before = y.copy()
  a = noise.symmetric_noise(y, 10, 0.4, seed=7)
  b = noise.symmetric_noise(y, 10, 0.4, seed=7)
  c = noise.symmetric_noise(y, 10, 0.4, seed=8)
  np.testing.assert_array_equal(a, b)
  assert np.mean(a != c) > 0.3  # a different seed is a different draw, not a small change
  np.testing.assert_array_equal(y, before)
  assert not np.shares_memory(a, y)
  np.testing.assert_array_equal(noise.symmetric_noise(y, 10, 0.0, seed=7), y)
  # A list works too and stays a list.
  lst = [0, 1, 2, 3] * 10
  noise.symmetric_noise(lst, 4, 1.0, seed=0)
  assert lst == [0, 1, 2, 3] * 10


def test_asymmetric_cifar10_flips_only_along_pairs():
  y = _labels(10)
  before = y.copy()
  rate = 0.4
  noisy = noise.asymmetric_noise(y, rate, seed=0)
  np.testing.assert_array_equal(y, before)
  assert noisy.dtype == np.int32
  allowed = {(9, 1), (2, 0), (4, 7), (3, 5), (5, 3)}  # truck->automobile, bird->airplane,
  moved = noisy != y                                  # deer->horse, cat<->dog
  assert set(zip(y[moved].tolist(), noisy[moved].tolist())) == allowed
  for src, _ in allowed:
    assert abs(np.mean(moved[y == src]) - rate) < 0.01  # per source class
  for c in (0, 1, 6, 7, 8):
    assert not moved[y == c].any()  # never a source: untouched


def test_asymmetric_determinism():
  y = _labels(10, n=5000)
  a = noise.asymmetric_noise(y, 0.3, seed=3)
  np.testing.assert_array_equal(a, noise.asymmetric_noise(y, 0.3, seed=3))
  assert not np.array_equal(a, noise.asymmetric_noise(y, 0.3, seed=4))


@pytest.mark.parametrize('pairs,num_classes', [('cifar10', 100), ('cyclic', 100),
                                               ('cyclic', None)])
def test_asymmetric_cyclic_for_other_k(pairs, num_classes):
  y = _labels(100)
  noisy = noise.asymmetric_noise(y, 0.2, seed=0, pairs=pairs, num_classes=num_classes)
  moved = noisy != y
  np.testing.assert_array_equal(noisy[moved], (y[moved] + 1) % 100)
  assert abs(np.mean(moved) - 0.2) < 0.01
  assert ((99, 0) in set(zip(y[moved].tolist(), noisy[moved].tolist())))  # wraps around


def test_asymmetric_custom_mapping_and_errors():
  y = _labels(5, n=10_000)
  noisy = noise.asymmetric_noise(y, 1.0, seed=0, pairs={0: 4, 2: 1})
  np.testing.assert_array_equal(noisy, np.select([y == 0, y == 2], [4, 1], y))
  with pytest.raises(ValueError, match='pairs'):
    noise.asymmetric_noise(y, 0.2, seed=0, pairs='cifar1000')
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    noise.symmetric_noise(y, 5, 1.5, seed=0)
  with pytest.raises(ValueError, match=r'\[0, 3\)'):
    noise.symmetric_noise(y, 3, 0.1, seed=0)  # labels up to 4 with K = 3
  with pytest.raises(ValueError, match='1-D integer'):
    noise.symmetric_noise(y.astype(np.float32), 5, 0.1, seed=0)


def test_apply_noise_dispatches_by_kind():
  y = _labels(10, n=5000)
  for kind, rate in (('none', 0.5), ('symmetric', 0.0), ('asymmetric', 0.0)):
    out = noise.apply_noise(y, 10, kind, rate, seed=1)
    np.testing.assert_array_equal(out, y)
    assert not np.shares_memory(out, y)  # a copy even when nothing flips
  np.testing.assert_array_equal(noise.apply_noise(y, 10, 'symmetric', 0.3, 2),
                                noise.symmetric_noise(y, 10, 0.3, 2))
  np.testing.assert_array_equal(noise.apply_noise(y, 10, 'asymmetric', 0.3, 2),
                                noise.asymmetric_noise(y, 0.3, 2, pairs='cifar10'))
  y100 = _labels(100, n=5000)
  np.testing.assert_array_equal(noise.apply_noise(y100, 100, 'asymmetric', 0.3, 2),
                                noise.asymmetric_noise(y100, 0.3, 2, pairs='cyclic',
                                                       num_classes=100))
  assert noise.NOISE_KINDS == ('none', 'symmetric', 'asymmetric')
  with pytest.raises(ValueError, match='pairflip'):
    noise.apply_noise(y, 10, 'pairflip', 0.3, 2)

"""The packaged MNIST split, ``load(DataParams)`` and its one-line config errors."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from sglr_jax import data, errors
from sglr_jax.data import datasets, noise


def _digest(*arrays):
  m = hashlib.sha256()
  for a in arrays:
    m.update(np.ascontiguousarray(a).tobytes())
  return m.hexdigest()


def test_mnist_split_is_fixed_balanced_and_disjoint():
  xtr, ytr, xte, yte = datasets.mnist_split()
  assert xtr.shape == (4000, 28, 28, 1) and xtr.dtype == np.uint8
  assert xte.shape == (1000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ytr), [400] * 10)
  np.testing.assert_array_equal(np.bincount(yte), [100] * 10)
  assert len(np.unique(ytr[:100])) == 10  # prefixes are class-mixed
  xtr2, ytr2, _, _ = datasets.mnist_split()
  np.testing.assert_array_equal(xtr, xtr2)
  np.testing.assert_array_equal(ytr, ytr2)
  train_rows = {a.tobytes() for a in xtr}
  assert sum(a.tobytes() in train_rows for a in xte) <= 5  # (MNIST has a few duplicates)


def test_mnist_split_matches_the_recorded_reference():
  """The exact arrays (order included) of the split as first released: runs stay comparable."""
  xtr, ytr, xte, yte = datasets.mnist_split()
  assert ytr[:12].tolist() == [1, 5, 4, 9, 0, 2, 7, 3, 6, 1, 2, 7]
  assert yte[:12].tolist() == [6, 7, 0, 5, 4, 8, 1, 6, 7, 7, 0, 1]
  assert _digest(xtr, ytr, xte, yte) == (
      '965e60fbeebe3e8db707b651fa5d1f70d6ff21c4b361973df935cfb09c7ccd6a')


def test_load_default_is_the_clean_split():
  ds = data.load(data.DataParams())
  xtr, ytr, xte, yte = datasets.mnist_split()
  assert (ds.name, ds.num_classes, ds.image_shape) == ('mnist', 10, (28, 28, 1))
  np.testing.assert_array_equal(ds.train_images, xtr)
  np.testing.assert_array_equal(ds.test_images, xte)
  for labels, ref in ((ds.train_labels, ytr), (ds.train_clean_labels, ytr),
                      (ds.test_labels, yte)):
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, ref)
  assert not ds.noisy.any()
  assert not np.shares_memory(ds.train_labels, ds.train_clean_labels)


def test_load_cuts_prefixes_then_applies_noise_to_them():
  params = data.DataParams(train_size=1000, test_size=300, noise_kind='symmetric',
                           noise_rate=0.4, noise_seed=3)
  ds = data.load(params)
  xtr, ytr, xte, yte = datasets.mnist_split()
  np.testing.assert_array_equal(ds.train_images, xtr[:1000])
  np.testing.assert_array_equal(ds.train_clean_labels, ytr[:1000])
  np.testing.assert_array_equal(ds.test_images, xte[:300])
  np.testing.assert_array_equal(ds.test_labels, yte[:300])
  np.testing.assert_array_equal(ds.train_labels, noise.symmetric_noise(ytr[:1000], 10, 0.4, 3))
  assert _digest(ds.train_labels) == (
      '5ec5cac2a3c3e0bdf06bff8bc3bb524ab21fdf208b87f44da845340c1a2d6961')
  assert abs(ds.noisy.mean() - 0.4 * 9 / 10) < 0.05
  # The noise is a function of the params alone.
  np.testing.assert_array_equal(data.load(params).train_labels, ds.train_labels)


def test_asymmetric_noise_on_mnist_uses_the_cifar10_pairs():
  ds = data.load(data.DataParams(noise_kind='asymmetric', noise_rate=1.0))
  y = ds.train_clean_labels
  np.testing.assert_array_equal(ds.train_labels[y == 9], 1)  # K = 10: the CIFAR-10 map
  np.testing.assert_array_equal(ds.train_labels[y == 0], 0)


def test_data_params_are_frozen_plain_values():
  p = data.DataParams(name='cifar10', data_dir='/d', noise_kind='symmetric', noise_rate=0.2)
  with pytest.raises(dataclasses.FrozenInstanceError):
    p.name = 'mnist'
  assert hash(p) == hash(dataclasses.replace(p))
  assert [f.name for f in dataclasses.fields(p)] == [
      'name', 'data_dir', 'augment', 'train_size', 'test_size', 'noise_kind', 'noise_rate',
      'noise_seed']


@pytest.mark.parametrize('params,field', [
    (data.DataParams(name='imagenet'), 'data.name'),
    (data.DataParams(noise_kind='pairflip', noise_rate=0.2), 'data.noise.kind'),
    (data.DataParams(noise_kind='pairflip'), 'data.noise.kind'),  # even at rate 0
    (data.DataParams(noise_kind='symmetric', noise_rate=1.5), 'data.noise.rate'),
    # Checked before any data is read: no DatasetNotPreparedError for the missing dir.
    (data.DataParams(name='cifar10', data_dir='/nonexistent', noise_kind='x'),
     'data.noise.kind'),
])
def test_bad_params_raise_one_line_config_errors(params, field):
  with pytest.raises(errors.ConfigError) as e:
    data.load(params)
  msg = str(e.value)
  assert msg.startswith(field + '=') and '\n' not in msg, msg
  assert isinstance(e.value, errors.UserError)


def test_public_api():
  assert sorted(data.__all__) == sorted([
      'DATASETS', 'DataParams', 'Dataset', 'load', 'train_batches', 'eval_batches',
      'steps_per_epoch', 'epoch_permutation', 'prefetch_to_mesh'])
  assert data.DATASETS == ('mnist', 'cifar10', 'cifar100')
  assert all(callable(getattr(data, n)) for n in data.__all__ if n != 'DATASETS')

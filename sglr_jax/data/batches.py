"""Epoch permutations and host batches: training (shuffled, full) and evaluation (padded).

Every training batch is ``{'image': uint8 [B, H, W, C], 'label': int32 [B] (the
possibly noisy training label), 'clean_label': int32 [B], 'index': int32 [B]}``;
``index`` is the example's row in the training set (and in the label table).
Evaluation batches are padded to a fixed size and carry a ``mask``.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from sglr_jax.data.datasets import Dataset


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
    rows = perm[s * batch_size:(s + 1) * batch_size]  # [B], the global batch
    idx = rows[process_index * local:(process_index + 1) * local]  # [B / P], this host's
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

"""Epoch permutations, training batches and padded evaluation batches."""
from __future__ import annotations

import numpy as np

from sglr_jax import data


def _toy(n=50):
  x = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
  y = (np.arange(n) % 3).astype(np.int32)
  return data.Dataset('toy', 3, x, y, y.copy(), x[:7], y[:7])


def test_epoch_permutation_matches_the_recorded_reference():
  assert data.epoch_permutation(3, 1, 12).tolist() == [0, 4, 11, 1, 2, 5, 10, 7, 9, 8, 6, 3]


def test_batches_carry_indices_and_follow_the_seeded_permutation():
  ds = _toy()
  b = list(data.train_batches(ds, seed=3, epoch=1, batch_size=16))
  assert len(b) == 3  # 50 // 16, the partial batch is dropped
  assert data.steps_per_epoch(50, 16) == 3
  perm = data.epoch_permutation(3, 1, 50)
  np.testing.assert_array_equal(np.concatenate([x['index'] for x in b]), perm[:48])
  for x in b:
    np.testing.assert_array_equal(x['image'][:, 0, 0, 0], x['index'])  # image i is example i
    np.testing.assert_array_equal(x['label'], x['index'] % 3)
    assert x['index'].dtype == np.int32
  assert not np.array_equal(perm, data.epoch_permutation(3, 2, 50))
  np.testing.assert_array_equal(perm, data.epoch_permutation(3, 1, 50))


def test_start_step_resumes_mid_epoch():
  ds = _toy()
  whole = list(data.train_batches(ds, 4, 0, 16))
  rest = list(data.train_batches(ds, 4, 0, 16, start_step=1))
  assert len(rest) == 2
  for w, r in zip(whole[1:], rest):
    np.testing.assert_array_equal(w['index'], r['index'])


def test_process_slices_tile_the_global_batch():
  ds = _toy()
  whole = list(data.train_batches(ds, 0, 0, 16))
  parts = [list(data.train_batches(ds, 0, 0, 16, p, 2)) for p in (0, 1)]
  for s, w in enumerate(whole):
    np.testing.assert_array_equal(
        np.concatenate([parts[0][s]['index'], parts[1][s]['index']]), w['index'])


def test_eval_batches_pad_and_mask():
  ds = _toy()
  b = list(data.eval_batches(ds.test_images, ds.test_labels, 4))
  assert [len(x['mask']) for x in b] == [4, 4]
  assert int(sum(x['mask'].sum() for x in b)) == 7
  np.testing.assert_array_equal(b[1]['mask'], [True, True, True, False])
  np.testing.assert_array_equal(b[1]['index'], [4, 5, 6, 7])
  np.testing.assert_array_equal(b[1]['image'][:, 0, 0, 0], [4, 5, 6, 0])  # padding: row 0

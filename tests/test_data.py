"""The packaged MNIST split, epoch permutations and batches."""
import numpy as np

from sglr_jax import data


def test_mnist_split_is_fixed_balanced_and_disjoint():
  xtr, ytr, xte, yte = data.mnist_split()
  assert xtr.shape == (4000, 28, 28, 1) and xtr.dtype == np.uint8
  assert xte.shape == (1000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ytr), [400] * 10)
  np.testing.assert_array_equal(np.bincount(yte), [100] * 10)
  assert len(np.unique(ytr[:100])) == 10  # prefixes are class-mixed
  xtr2, ytr2, _, _ = data.mnist_split()
  np.testing.assert_array_equal(xtr, xtr2)
  np.testing.assert_array_equal(ytr, ytr2)
  train_rows = {a.tobytes() for a in xtr}
  assert sum(a.tobytes() in train_rows for a in xte) <= 5  # (MNIST has a few duplicates)


def _toy(n=50):
  x = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
  y = (np.arange(n) % 3).astype(np.int32)
  return data.Dataset('toy', 3, x, y, y.copy(), x[:7], y[:7])


def test_batches_carry_indices_and_follow_the_seeded_permutation():
  ds = _toy()
  b = list(data.train_batches(ds, seed=3, epoch=1, batch_size=16))
  assert len(b) == 3  # 50 // 16, the partial batch is dropped
  perm = data.epoch_permutation(3, 1, 50)
  np.testing.assert_array_equal(np.concatenate([x['index'] for x in b]), perm[:48])
  for x in b:
    np.testing.assert_array_equal(x['image'][:, 0, 0, 0], x['index'])  # image i is example i
  assert not np.array_equal(perm, data.epoch_permutation(3, 2, 50))
  np.testing.assert_array_equal(perm, data.epoch_permutation(3, 1, 50))


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

"""prefetch_to_mesh: the same batches in the same order, errors surface, no thread left,
look-ahead bounded by ``size`` (counted, not timed)."""
from __future__ import annotations

import contextlib
import threading

import jax
import numpy as np
import pytest

from sglr_jax import data, mesh as mesh_lib
from sglr_jax.data import prefetch as prefetch_lib


def _threads():
  return [t for t in threading.enumerate() if t.name.startswith('prefetch')]


class Counting:
  """An iterator of ``n`` batches that records, at each pull, how far it is ahead.

  ``asked``: how many items the consumer has requested (incremented by ``consume``
  before each ``next``). Batch ``j`` may be pulled only while ``j < size + asked``.
  """

  def __init__(self, n, size, fail_at=None):
    self.n, self.size, self.fail_at = n, size, fail_at
    self.pulled = 0
    self.asked = 0
    self.violations = []
    self.reached = threading.Event()  # the producer pulled as far as it may

  def __iter__(self):
    return self

  def __next__(self):
    j = self.pulled
    if j >= self.n:
      raise StopIteration
    if j >= self.size + self.asked:
      self.violations.append((j, self.asked))
    if j == self.size + self.asked - 1:
      self.reached.set()
    if j == self.fail_at:
      raise RuntimeError(f'bad batch {j}')
    self.pulled += 1
    return {'x': np.full((4, 2), j, np.float32), 'i': np.arange(4, dtype=np.int32) + 4 * j}


def consume(gen, source, stop_after=None):
  out = []
  while stop_after is None or len(out) < stop_after:
    source.asked += 1
    try:
      out.append(next(gen))
    except StopIteration:
      break
  return out


def test_same_batches_in_the_same_order_on_the_mesh():
  mesh = mesh_lib.make_mesh()
  ds = data.Dataset('t', 3, np.arange(40 * 4, dtype=np.uint8).reshape(40, 2, 2, 1),
                    np.arange(40, dtype=np.int32) % 3, np.arange(40, dtype=np.int32) % 3,
                    np.zeros((1, 2, 2, 1), np.uint8), np.zeros(1, np.int32))
  plain = [mesh_lib.to_global(b, mesh) for b in data.train_batches(ds, 7, 1, 8)]
  fetched = list(data.prefetch_to_mesh(data.train_batches(ds, 7, 1, 8), mesh, size=2))
  assert len(fetched) == len(plain) == 5
  for a, b in zip(plain, fetched):
    assert a.keys() == b.keys()
    for k in a:
      assert isinstance(b[k], jax.Array) and b[k].sharding == a[k].sharding
      np.testing.assert_array_equal(np.asarray(b[k]), np.asarray(a[k]))
  assert not _threads()


@pytest.mark.parametrize('size', [1, 2, 5])
def test_look_ahead_is_bounded_by_size(size):
  source = Counting(12, size)
  gen = prefetch_lib.prefetch(source, lambda b: b, size)
  first = consume(gen, source, stop_after=1)
  assert source.reached.wait(60)  # the producer went as far ahead as it may...
  rest = consume(gen, source)
  assert not source.violations  # ...and never further
  assert [int(b['x'][0, 0]) for b in first + rest] == list(range(12))
  assert not _threads()


def test_producer_error_surfaces_after_the_good_batches():
  source = Counting(10, 2, fail_at=3)
  gen = prefetch_lib.prefetch(source, lambda b: b, 2)
  got = []
  with pytest.raises(RuntimeError, match='bad batch 3'):
    for b in gen:
      got.append(int(b['x'][0, 0]))
  assert got == [0, 1, 2]
  assert not _threads()


def test_placement_error_surfaces():
  def place(b):
    if int(b['x'][0, 0]) == 1:
      raise ValueError('cannot place')
    return b

  with pytest.raises(ValueError, match='cannot place'):
    list(prefetch_lib.prefetch(Counting(5, 2), place, 2))
  assert not _threads()


def test_early_stop_leaves_no_thread_and_pulls_no_more():
  mesh = mesh_lib.make_mesh()
  source = Counting(100, 3)
  with contextlib.closing(prefetch_lib.prefetch_to_mesh(source, mesh, size=3)) as gen:
    got = consume(gen, source, stop_after=4)  # e.g. SIGTERM: the loop breaks
    assert len(_threads()) == 1
  assert not _threads()
  assert [int(np.asarray(b['x'])[0, 0]) for b in got] == [0, 1, 2, 3]
  assert source.pulled <= 4 + 3 and not source.violations


def test_abandoned_generator_is_closed_by_garbage_collection():
  source = Counting(100, 2)
  gen = prefetch_lib.prefetch(source, lambda b: b, 2)
  consume(gen, source, stop_after=2)
  del gen  # as when the loop's frame ends after a break
  assert not _threads()


def test_size_must_be_positive():
  with pytest.raises(ValueError, match='at least 1'):
    next(prefetch_lib.prefetch([1], lambda b: b, 0))

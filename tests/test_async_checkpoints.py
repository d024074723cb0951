"""Asynchronous ``latest`` saves and one write per state for ``best`` / ``final``."""
from __future__ import annotations

import os
import threading

import jax
import numpy as np
import pytest

from conftest import tiny_config
from sglr_jax import checkpoints, experiment


@pytest.fixture(scope='module')
def state():
  exp = experiment.build(tiny_config())
  return experiment.initial_state(exp)


def _leaves_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_caller_goes_on_while_the_write_is_held(state, tmp_path, monkeypatch):
  """The manifest is written inside the commit, on Orbax's background thread: held there
  by an event, ``save`` has returned and nothing is committed; released, ``wait``
  completes the checkpoint, whose manifest verifies and which restores exactly."""
  wd = str(tmp_path)
  release, entered = threading.Event(), threading.Event()
  real = checkpoints.write_manifest

  def held(directory):
    entered.set()
    assert release.wait(120), 'never released'
    real(directory)

  monkeypatch.setattr(checkpoints, 'write_manifest', held)
  checkpoints.save(wd, 'latest', state, 4, {'epoch': 1}, asynchronous=True)
  assert entered.wait(120)  # the background commit is under way ...
  path = os.path.join(wd, 'checkpoints', 'latest', '4')
  assert not os.path.exists(os.path.join(path, checkpoints.COMMIT_FILE))  # ... not done
  release.set()
  checkpoints.wait()
  assert checkpoints.committed(wd, 'latest', 4)
  assert checkpoints.verify_manifest(path) is True
  got, key = checkpoints.restore(wd, 'latest', state)
  assert key == 4
  _leaves_equal(got, state)
  assert checkpoints.read_progress(wd, 'latest', 4) == {'epoch': 1}


def test_best_and_final_are_links_to_the_one_latest_write(state, tmp_path):
  """An epoch end where best and final equal latest: one write, two links."""
  wd = str(tmp_path)
  checkpoints.save(wd, 'latest', state, 8, {'epoch': 2}, asynchronous=True,
                   also=(('best', 2), ('final', 2)))
  # a read waits for the pending save first
  assert [checkpoints.available(wd, k) for k in checkpoints.KINDS] == [[8], [2], [2]]
  latest = os.path.join(wd, 'checkpoints', 'latest', '8')
  files = sorted(os.path.relpath(os.path.join(r, n), latest)
                 for r, _, ns in os.walk(latest) for n in ns)
  assert 'MANIFEST' in files and checkpoints.COMMIT_FILE in files
  for kind in ('best', 'final'):
    d = os.path.join(wd, 'checkpoints', kind, '2')
    for rel in files:  # the same inodes: nothing written twice
      assert os.stat(os.path.join(d, rel)).st_ino == os.stat(os.path.join(latest, rel)).st_ino
    got, key = checkpoints.restore(wd, kind, state, read_only=True)
    assert key == 2
    _leaves_equal(got, state)
  assert not any('tmp' in n for k in checkpoints.KINDS
                 for n in os.listdir(os.path.join(wd, 'checkpoints', k)))


def test_saves_queue_one_at_a_time_and_keep_the_retention(state, tmp_path):
  """Each save waits for the one before: three asynchronous saves leave the newest two
  of ``latest`` (KEEP) and a best replaced by a later link."""
  wd = str(tmp_path)
  checkpoints.save(wd, 'latest', state, 1, asynchronous=True, also=(('best', 1),))
  checkpoints.save(wd, 'latest', state, 2, asynchronous=True)
  checkpoints.save(wd, 'latest', state, 3, asynchronous=True, also=(('best', 3),))
  checkpoints.wait()
  checkpoints.wait()  # nothing pending: returns
  assert checkpoints.available(wd, 'latest') == [2, 3]
  assert checkpoints.available(wd, 'best') == [3]

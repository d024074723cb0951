"""A resumable AutoAttack run killed with SIGKILL (another process, at a chosen
boundary) and run again continues from its state file and gives exactly the robust
flags, points and accuracies of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import _aa_kill_worker as worker

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_aa_kill_worker.py')


@pytest.fixture(scope='module')
def uninterrupted():
  return worker.run(*worker.problem())


def _killed_at(path, attack, step):
  """Starts the worker, waits for its marker line, kills it with SIGKILL."""
  proc = subprocess.Popen([sys.executable, WORKER, path, attack, str(step).lower()],
                          stdout=subprocess.PIPE, text=True)
  try:
    line = proc.stdout.readline().strip()   # blocks until the worker reached the point
    assert line == 'MARK', line
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    proc.stdout.close()


@pytest.mark.parametrize('attack,step', [('apgd-t', 2), ('square', 100)])
def test_sigkilled_run_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path, attack,
                                                           step):
  path = str(tmp_path / 'eval_state' / 'final.npz')
  _killed_at(path, attack, step)
  assert os.path.exists(path)
  assert os.listdir(tmp_path / 'eval_state') == ['final.npz']    # no temporary left
  seen = []
  res = worker.run(*worker.problem(), state_path=path, hook=lambda n, s: seen.append((n, s)))
  # nothing before the kill point runs again; the attack continues after it
  assert all(n != 'apgd-ce' for n, _ in seen)
  assert (attack, step) not in seen and any(n == attack for n, _ in seen)
  np.testing.assert_array_equal(res['robust'], uninterrupted['robust'])
  np.testing.assert_array_equal(res['x_adv'], uninterrupted['x_adv'])
  np.testing.assert_array_equal(res['broken_by'], uninterrupted['broken_by'])
  assert res['robust_acc_after'] == uninterrupted['robust_acc_after']
  assert res['clean_acc'] == uninterrupted['clean_acc']
  # points broken before and after the kill point: both parts of the run mattered
  assert {'apgd-ce', 'apgd-t'} <= set(uninterrupted['broken_by'])
  assert 0 < uninterrupted['robust'].mean() < uninterrupted['clean_acc']

"""A resumable ensemble: runs interrupted at an attack boundary, or inside an attack at a
run / query-slice boundary, and resumed from the state file give exactly the robust
flags, points and accuracies of an uninterrupted run."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

import _aa_kill_worker as kill_worker
from attack_support import OPS
from sglr_jax.attacks import autoattack as aa

N, HW, K = 40, 6, 10
CFG = aa.AutoAttackConfig(apgd_n_iter=10, apgd_t_n_iter=10, apgd_t_n_target_classes=3,
                          fab_n_iter=10, fab_n_target_classes=3, square_n_queries=200,
                          square_queries_per_call=50)


class Interrupt(Exception):
  pass


@pytest.fixture(scope='module')
def problem():
  assert (kill_worker.HW, kill_worker.K) == (HW, K)
  return kill_worker.problem(N, seed=2)


def _run(problem, **kwargs):
  fn, x, y = problem
  return aa.run_autoattack(fn, x, y, 0.04, key=jax.random.key(0), batch_size=16, config=CFG,
                           progress=False, ops=OPS, **kwargs)


@pytest.fixture(scope='module')
def uninterrupted(problem):
  return _run(problem)


def _stop_at(attack, step):
  def hook(name, s):
    if (name, s) == (attack, step):
      raise Interrupt
  return hook


@pytest.mark.parametrize('attack,step', [('apgd-ce', None), ('apgd-t', 2), ('fab-t', 1),
                                         ('square', 100)])
def test_interrupted_and_resumed_equals_uninterrupted(problem, uninterrupted, tmp_path,
                                                      attack, step):
  path = str(tmp_path / 'state' / 'final.npz')
  with pytest.raises(Interrupt):
    _run(problem, state_path=path, state_every_s=0.0, hook=_stop_at(attack, step))
  assert os.path.exists(path)
  assert not [f for f in os.listdir(tmp_path / 'state') if 'tmp' in f]   # atomic
  seen = []
  res = _run(problem, state_path=path, hook=lambda n, s: seen.append((n, s)))
  if step is None:                                   # the finished attack is not rerun
    assert all(n != attack for n, _ in seen)
  else:                                              # the attack continues after `step`
    assert (attack, step) not in seen and any(n == attack for n, _ in seen)
  np.testing.assert_array_equal(res['robust'], uninterrupted['robust'])
  np.testing.assert_array_equal(res['x_adv'], uninterrupted['x_adv'])
  np.testing.assert_array_equal(res['broken_by'], uninterrupted['broken_by'])
  assert res['robust_acc_after'] == uninterrupted['robust_acc_after']
  assert 0 < uninterrupted['robust'].mean() < uninterrupted['clean_acc']


def test_a_finished_state_reruns_nothing_and_another_run_is_refused(problem, uninterrupted,
                                                                     tmp_path):
  path = str(tmp_path / 'final.npz')
  _run(problem, state_path=path)
  seen = []
  res = _run(problem, state_path=path, hook=lambda n, s: seen.append(n))
  assert seen == []
  np.testing.assert_array_equal(res['robust'], uninterrupted['robust'])
  fn, x, y = problem
  with pytest.raises(ValueError, match='another AutoAttack run'):
    aa.run_autoattack(fn, x, y, 0.05, key=jax.random.key(0), batch_size=16, config=CFG,
                      progress=False, ops=OPS, state_path=path)

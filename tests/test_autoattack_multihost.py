"""AutoAttack (``evaluation.autoattack``) over the devices of two processes (2 x 2 CPU
devices joined by ``jax.distributed`` on 127.0.0.1) gives, point for point and on both
processes, what one process with 4 devices gives: every device attacks the same rows.

The two processes get separate workdirs, as hosts without a shared disk: process 0
writes the files, and after an interruption reads the state for both, so process 1's
workdir stays empty and both resume from the same boundary.
"""
import json
import os

import numpy as np
import pytest

import _mp_worker as w

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_aa_mp_worker.py')
INTERRUPT = ('apgd-t', 2)  # of 3 target classes (the smoke budget)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('aa_multihost')
  port = w.free_port()
  specs = [dict(processes=2, process_id=i, port=port, workdir=str(tmp / f'wd{i}'),
                out=str(tmp / 'multi'), interrupt=INTERRUPT) for i in range(2)]
  specs.append(dict(processes=1, process_id=0, port=0, workdir=str(tmp / 'wd_single'),
                    out=str(tmp / 'single')))
  procs, logs = [], []
  try:
    for i, spec in enumerate(specs):
      path, logs = tmp / f'spec{i}.json', logs + [str(tmp / f'log{i}.txt')]
      path.write_text(json.dumps(spec))
      procs.append(w.start([WORKER, str(path)], 4 // spec['processes'], logs[-1]))
    rcs = w.wait_all(procs, timeout=w.WAIT_S)
  finally:
    w.stop(procs)
  if any(rcs):
    raise RuntimeError(f'return codes {rcs}:\n' + '\n'.join(w.tail(log) for log in logs))
  load = lambda path: dict(np.load(path))
  return {'multi': [load(tmp / f'multi.p{i}.npz') for i in range(2)],
          'single': load(tmp / 'single.p0.npz'), 'tmp': tmp}


def test_two_processes_give_the_one_process_result_point_for_point(runs):
  single = runs['single']
  assert single['devices'].tolist() == [4, 1, 0]
  robust = single['0/robust']
  assert 0 < robust.sum() < len(robust)                    # a result worth comparing
  assert len(set(single['0/broken_by'].tolist()) - {''}) >= 2
  want_metrics = json.loads(str(single['metrics']))[0]
  assert want_metrics['autoattack_acc'] == robust.mean()
  for got in runs['multi']:                                # on each process
    assert got['devices'][:2].tolist() == [4, 2] and got['devices'][2] > 0  # split batches
    for k in ('robust', 'x_adv', 'broken_by'):
      np.testing.assert_array_equal(got[f'0/{k}'], single[f'0/{k}'], err_msg=k)
    assert json.loads(str(got['metrics']))[0] == want_metrics


def test_a_batch_that_does_not_split_over_the_devices_is_refused(runs):
  for got in runs['multi'] + [runs['single']]:
    assert str(got['uneven']) == ('batch_size=6 does not split evenly over the 4 devices '
                                  'of the sharding')


def test_process_0_writes_the_same_adversarial_examples(runs):
  tmp = runs['tmp']
  want = np.load(tmp / 'wd_single' / 'adversarial' / 'best.npz')
  for kind in ('best', 'final'):
    got = np.load(tmp / 'wd0' / 'adversarial' / f'{kind}.npz')
    assert set(got.files) == set(want.files)
    for k in want.files:
      np.testing.assert_array_equal(got[k], want[k], err_msg=f'{kind} {k}')
  assert not os.listdir(tmp / 'wd0' / 'eval_state')        # removed when complete
  assert sorted(os.listdir(tmp / 'wd0' / 'adversarial')) == ['best.npz', 'final.npz']
  assert not os.path.exists(tmp / 'wd1')                   # process 1 wrote nothing


def test_both_processes_resume_from_process_0s_state(runs):
  single = runs['single']
  attack, step = INTERRUPT
  for got in runs['multi']:
    seen = [s.split(' ', 1) for s in got['seen'].tolist()]
    assert f'{attack} {step}' in [s for c, s in seen if c == '1']    # stopped there
    resumed = [s for c, s in seen if c == '2']
    assert resumed[0] == f'{attack} {step + 1}'            # and went on from there
    for k in ('robust', 'x_adv', 'broken_by'):
      np.testing.assert_array_equal(got[f'1/{k}'], single[f'0/{k}'], err_msg=k)
    metrics = json.loads(str(got['metrics']))
    assert metrics[1] == metrics[0]

"""Two processes x 2 CPU devices, joined by ``jax.distributed`` on 127.0.0.1 (gloo
collectives), run ``run.py`` and match a single-process, single-device run.

Launch 1 trains with a row-sharded label table; after the 2nd step of epoch 2, process
1 (only) gets SIGTERM, sent by a training hook that the test's worker adds to the same
command line (``_mp_worker.sigterm_hook``, which also waits until JAX's preemption
service has taken every process's step count): the service tells process 0, both stop
at that step, save one checkpoint together and exit 0. Nothing depends on how fast the
notice travels. Launch 2 resumes it (a multi-process restore of sharded state,
mid-epoch) and finishes.
The history and the final checkpoint (restored here on 1 device) must match the
single-process run within the tolerance of test_mesh.py (float32 summation
order; accuracies may differ by one test example at a near tie). Launch 3 evaluates
that workdir with ``--mode=eval`` (AutoAttack included) on both processes, and must
give the table an evaluation in this process gives.
"""
import json
import os

import jax
import numpy as np
import pytest

import _mp_worker as w
from sglr_jax import checkpoints, experiment, history
from sglr_jax.evaluation import evaluate
from sglr_jax.training import loop

OVERRIDES = {'train.batch_size': 16, 'sglr.table_sharding': 'sharded'}  # 7 steps per epoch
SPE = w.MP_OVERRIDES['data.train_size'] // OVERRIDES['train.batch_size']
SIGTERM_AT = SPE + 2  # global step: the 2nd of epoch 2
TIME_KEYS = ('epoch_time_s', 'train_time_s')


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('single'))
  hist = loop.train_and_evaluate(w.config(**OVERRIDES), wd, progress=False)
  return wd, hist


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp('multihost'))
  wd = os.path.join(tmp, 'wd')
  flags = w.cli_flags(**OVERRIDES) + [f'--workdir={wd}']
  hist_path = os.path.join(wd, 'history.jsonl')
  logs1 = w.launch_run_py(flags, tmp, 'launch1', timeout=400, sigterm=(1, SIGTERM_AT))
  with open(hist_path) as f:
    lines_after_1 = [json.loads(line) for line in f if line.strip()]
  latest_after_1 = checkpoints.available(wd, 'latest')
  progress = checkpoints.read_progress(wd, 'latest', latest_after_1[-1])
  logs2 = w.launch_run_py(flags, tmp, 'launch2', timeout=400)
  return {'wd': wd, 'lines_after_1': lines_after_1, 'latest_after_1': latest_after_1,
          'progress': progress, 'logs': [w.tail(p, 20000) for p in logs1 + logs2]}


def test_only_process_0_writes_history_and_config(two_processes):
  r = two_processes
  assert [x['epoch'] for x in r['lines_after_1']] == [1]  # one line: process 1 wrote none
  with open(os.path.join(r['wd'], 'config.json')) as f:
    written = json.load(f)
  expected = json.loads(w.config(**OVERRIDES).to_json_best_effort())
  written.pop('distributed'), expected.pop('distributed')
  assert written == expected  # run.py's flags gave the config of the reference


def test_sigterm_to_one_process_stops_both_inside_epoch_2(two_processes):
  r = two_processes
  last = r['latest_after_1'][-1]
  assert SPE < last < 2 * SPE, r['latest_after_1']  # a mid-epoch checkpoint of epoch 2
  assert last == SIGTERM_AT  # both stopped at the step the signal came after
  assert r['latest_after_1'][:-1] == [SPE]
  assert r['progress']['epoch'] == 1 and r['progress']['step_in_epoch'] == last - SPE
  assert len(r['progress']['metrics']) == last - SPE
  assert 'SIGTERM: saved checkpoint latest/%d' % last in r['logs'][0]
  assert 'resuming from checkpoint latest/%d' % last in r['logs'][2]


def _close(a: dict, b: dict):
  assert set(a) == set(b)
  for k in a:
    if k in TIME_KEYS or k == 'epoch':
      continue
    tol = 1 / 64 + 1e-9 if k.startswith('test_') else 1e-5 * abs(b[k]) + 1e-7
    assert abs(a[k] - b[k]) <= tol, (k, a[k], b[k])


def test_two_process_run_matches_single_process(two_processes, reference):
  got = history.read_history(two_processes['wd'])
  want = reference[1]
  assert [r['epoch'] for r in got] == [r['epoch'] for r in want] == [1, 2]
  for a, b in zip(got, want):
    _close(a, b)


def test_two_process_checkpoint_restores_on_one_device(two_processes, reference):
  exp = experiment.build(w.config(**OVERRIDES))
  target = experiment.initial_state(exp)
  got, epoch = checkpoints.restore(two_processes['wd'], 'final', target)
  want, _ = checkpoints.restore(reference[0], 'final', target)
  assert epoch == 2 and got.label_table.shape == (w.MP_OVERRIDES['data.train_size'], 10)
  flat_got = jax.tree_util.tree_leaves_with_path(got)
  flat_want = jax.tree_util.tree_leaves(want)
  for (path, a), b in zip(flat_got, flat_want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))


def test_two_process_eval_with_autoattack_matches_one_process(two_processes, tmp_path):
  """Every metric, the AutoAttack ensemble included, runs with its batches split over the
  4 devices of both processes (each device attacks its own rows; every process gets the
  whole result). Process 0 writes the results."""
  wd = two_processes['wd']
  w.launch_run_py(w.cli_flags(**OVERRIDES) + [f'--workdir={wd}', '--mode=eval'],
                  str(tmp_path), 'eval', timeout=400)
  with open(os.path.join(wd, 'results.json')) as f:
    multi = json.load(f)
  single = evaluate.evaluate(w.config(**OVERRIDES), wd, progress=False)
  assert 'autoattack' in multi['eval_config']['suite']
  for kind in ('best', 'final'):
    got, want = multi[kind], single[kind]
    assert got['epoch'] == want['epoch']
    assert got['autoattack_examples'] == want['autoattack_examples'] > 0
    assert set(got['autoattack_after']) == set(want['autoattack_after'])
    pairs = [(k, got[k], want[k]) for k in ('natural_acc', 'pgd20_acc', 'autoattack_acc')]
    pairs += [('after ' + k, got['autoattack_after'][k], v)
              for k, v in want['autoattack_after'].items()]
    for k, a, b in pairs:  # one test example at a near tie, as above
      assert abs(a - b) <= 1 / 64 + 1e-9, (kind, k, a, b)
    assert abs(got['ece_clean'] - want['ece_clean']) < 1e-3, kind

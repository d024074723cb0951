"""End to end: the command line in-process, resume equals an uninterrupted run, eval,
checkpoints, hooks."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from sglr_jax import checkpoints, cli, errors, experiment, history
from sglr_jax.evaluation import evaluate
from sglr_jax.training import loop

TIME_KEYS = ('epoch_time_s', 'train_time_s')


def _strip(history):
  return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in history]


def _run_py(args):
  cli.run_argv(['run.py'] + args, progress=False)


TINY_FLAGS = ['--config.model.width=8', '--config.data.train_size=256',
              '--config.data.test_size=100', '--config.train.batch_size=64',
              '--config.train.epochs=3', '--config.schedule.decay_epochs=(2,)',
              '--config.attack.steps=2', '--config.eval.steps=3', '--config.eval.batch_size=50',
              '--config.sglr.start_epoch=1', '--config.eval.autoattack_budget=smoke']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('full'))
  _run_py(['--config=configs/mnist_sglr.py', f'--workdir={wd}'] + TINY_FLAGS)
  return wd


def test_run_py_writes_history_config_and_checkpoints(trained):
  hist = history.read_history(trained)
  assert [r['epoch'] for r in hist] == [1, 2, 3]
  for r in hist:
    for k in ('epoch', 'lr', 'train_loss', 'train_adv_acc', 'test_natural_acc', 'test_pgd20_acc'):
      assert k in r
    assert 0 <= r['test_pgd20_acc'] <= r['test_natural_acc'] + 0.05 <= 1.05
  assert hist[0]['lr'] == pytest.approx(0.1) and hist[2]['lr'] == pytest.approx(0.01)
  cfg = json.load(open(os.path.join(trained, 'config.json')))
  assert cfg['model']['width'] == 8 and cfg['sglr']['enabled'] is True
  assert checkpoints.available(trained, 'final') == [3]
  best = max(hist, key=lambda r: r['test_pgd20_acc'])['epoch']
  assert checkpoints.available(trained, 'best') == [best]


def test_eval_mode_writes_results(trained):
  _run_py(['--config=configs/mnist_sglr.py', f'--workdir={trained}', '--mode=eval'] + TINY_FLAGS)
  res = json.load(open(os.path.join(trained, 'results.json')))
  hist = {r['epoch']: r for r in history.read_history(trained)}
  for kind in ('best', 'final'):
    r = res[kind]
    # the eval recomputes the same numbers the history logged for that epoch
    assert r['natural_acc'] == pytest.approx(hist[r['epoch']]['test_natural_acc'])
    assert r['pgd20_acc'] == pytest.approx(hist[r['epoch']]['test_pgd20_acc'])
  assert res['diff']['pgd20_acc'] == pytest.approx(
      res['best']['pgd20_acc'] - res['final']['pgd20_acc'])
  for kind in ('best', 'final'):  # the main job's suite: AutoAttack (smoke budget here), ECE
    r = res[kind]
    after = list(r['autoattack_after'].values())
    assert list(r['autoattack_after']) == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
    assert r['autoattack_acc'] == after[-1] <= r['natural_acc']
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert 0 <= r['ece_clean'] <= 1 and 0 <= r['ece_adv'] <= 1
    # the per-epoch ECE (calibration over training) is the same ECE of the same logits
    assert r['ece_clean'] == pytest.approx(hist[r['epoch']]['test_ece_clean'], abs=1e-9)
    assert r['ece_adv'] == pytest.approx(hist[r['epoch']]['test_ece_pgd20'], abs=1e-9)
  assert res['eval_config']['autoattack_budget'] == 'smoke'
  md = open(os.path.join(trained, 'results.md')).read()
  assert '| AutoAttack (smoke budget) |' in md and '| ECE clean |' in md
  assert '| PGD-20 |' in md and f"{100 * res['final']['natural_acc']:.2f}" in md


def test_resume_gives_the_same_history(trained, tmp_path):
  wd = str(tmp_path)
  _run_py(['--config=configs/mnist_sglr.py', f'--workdir={wd}', '--config.train.halt_after_epoch=1']
          + TINY_FLAGS)
  assert len(history.read_history(wd)) == 1
  _run_py(['--config=configs/mnist_sglr.py', f'--workdir={wd}'] + TINY_FLAGS)
  assert _strip(history.read_history(wd)) == _strip(history.read_history(trained))


def test_checkpoint_round_trip_holds_all_state(tmp_path):
  s = experiment.build(tiny_config())
  st = experiment.initial_state(s)
  st = st.replace(label_table=st.label_table * 0.5 + 0.25, rng=jax.random.PRNGKey(7),
                  epoch=st.epoch + 2, best_metric=st.best_metric + 1.5)
  checkpoints.save(str(tmp_path), 'latest', st, 2)
  fresh = experiment.initial_state(s)
  got, epoch = checkpoints.restore(str(tmp_path), 'latest', fresh)
  assert epoch == 2
  for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_damaged_latest_checkpoint_falls_back(tmp_path, caplog):
  s = experiment.build(tiny_config())
  st = experiment.initial_state(s)
  checkpoints.save(str(tmp_path), 'latest', st.replace(epoch=st.epoch + 1), 1)
  checkpoints.save(str(tmp_path), 'latest', st.replace(epoch=st.epoch + 2), 2)
  # truncate every data file of the newest checkpoint
  for root, _, files in os.walk(os.path.join(tmp_path, 'checkpoints', 'latest', '2')):
    for f in files:
      if 'METADATA' not in f and not f.endswith('.txt'):
        open(os.path.join(root, f), 'w').close()
  got, epoch = checkpoints.restore(str(tmp_path), 'latest', st)
  assert epoch == 1 and int(got.epoch) == 1
  assert 'unreadable' in caplog.text


def test_eval_without_checkpoints_is_a_clear_error(tmp_path):
  with pytest.raises(errors.NoCheckpointError, match='no .best. checkpoint'):
    evaluate.evaluate(tiny_config(), str(tmp_path), progress=False)


def test_a_tie_with_the_stored_best_is_not_an_improvement():
  """The best metric is stored in float32; 0.923 (float64) > float32(0.923), so a plain
  comparison took every later tie for a new best (a study's SGLR run moved its best
  checkpoint from epoch 21 to the last tie, epoch 39)."""
  stored = jnp.asarray(0.923, jnp.float32)
  assert 0.923 > float(stored)  # the trap
  assert not loop.improves(0.923, stored)
  assert loop.improves(0.924, stored)
  assert not loop.improves(0.922, stored)
  assert loop.improves(0.0, jnp.asarray(-1.0, jnp.float32))  # the first evaluation
  assert not loop.improves(None, jnp.asarray(-1.0, jnp.float32))  # an epoch without one


def test_restore_without_a_checkpoint_is_a_clear_error(tmp_path):
  s = experiment.build(tiny_config())
  with pytest.raises(errors.NoCheckpointError, match="no 'final' checkpoint"):
    experiment.restore(s, str(tmp_path), 'final')
  with pytest.raises(errors.NoCheckpointError, match='no config.json'):
    experiment.load_workdir_config(str(tmp_path))


def test_hooks_see_every_step_and_halt_after_epoch_stops(tmp_path):
  """Hooks run after every train step with the global step count; a halted run (after
  epoch 1 of 3: 4 steps of 64) stops there with its history and a resumable checkpoint."""
  seen = []
  hist = loop.train_and_evaluate(tiny_config(**{'train.halt_after_epoch': 1}), str(tmp_path),
                                 progress=False, hooks=[seen.append])
  assert seen == [1, 2, 3, 4]
  assert [r['epoch'] for r in hist] == [1]
  assert checkpoints.available(str(tmp_path), 'latest') == [4]
  assert experiment.load_workdir_config(str(tmp_path)).train.halt_after_epoch == 1


def test_swa_and_awp_resume_exactly(tmp_path):
  """Halted after epoch 1 and resumed == uninterrupted: the weight average (snapshots
  every 3 steps, across epoch ends) and its count are part of the checkpoint; ``final``
  is evaluated with the average."""
  fields = {'train.swa_start_epoch': 0, 'train.swa_every_steps': 3, 'objective.awp_gamma': 0.01,
            'train.train_fit_every_epochs': 0, 'parallel.num_devices': 1}
  full, part = str(tmp_path / 'full'), str(tmp_path / 'part')
  loop.train_and_evaluate(tiny_config('mnist_at', **fields), full, progress=False)
  loop.train_and_evaluate(tiny_config('mnist_at', **fields, **{'train.halt_after_epoch': 1}),
                          part, progress=False)
  hist = loop.train_and_evaluate(tiny_config('mnist_at', **fields), part, progress=False)
  hist_full = history.read_history(full)
  assert _strip(hist) == _strip(hist_full)
  s = experiment.build(tiny_config('mnist_at', **fields))
  a, _ = experiment.restore(s, full, 'final')
  b, _ = experiment.restore(s, part, 'final')
  assert int(a.swa_count) == 4  # 12 steps: snapshots after steps 3, 6, 9, 12
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  res = evaluate.evaluate(tiny_config('mnist_at', **fields), full, progress=False)
  assert res['final']['natural_acc'] == pytest.approx(hist_full[-1]['test_natural_acc'])

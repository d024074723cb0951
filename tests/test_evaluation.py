"""The evaluators and ``evaluate`` on a tiny untrained model, against direct computations."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from sglr_jax import checkpoints, errors, experiment
from sglr_jax.attacks import pgd
from sglr_jax.attacks.common import example_keys
from sglr_jax.evaluation import evaluate as evaluate_lib
from sglr_jax.evaluation import metrics, natural_pgd, predict, results

SUITE = ('natural', 'pgd20', 'ece')


def _config(**overrides):
  return tiny_config(**{'eval.suite': SUITE, **overrides})


@pytest.fixture(scope='module')
def exp():
  return experiment.build(_config())


@pytest.fixture(scope='module')
def variables(exp):
  return experiment.variables_of(experiment.initial_state(exp))


def _scaled(variables, factor):
  """Other weights of the same model: every parameter times ``factor``."""
  return {'params': jax.tree.map(lambda v: v * factor, variables['params']),
          'batch_stats': variables['batch_stats']}


def _direct(exp, variables, x, y):
  """Clean and PGD logits of all points in one unsharded call (no eval step, no batches)."""
  ev = exp.eval
  xf = np.asarray(x, np.float32) / 255.0  # [M, H, W, C]
  logits_fn = lambda z: exp.model.apply(variables, z, train=False)
  keys = example_keys(jax.random.PRNGKey(ev.seed), np.arange(len(y)))  # by dataset index
  x_adv = jax.jit(lambda xb, yb, kb: pgd.pgd_attack(
      logits_fn, xb, yb, eps=ev.eps, step_size=ev.step_size, steps=ev.steps, key=kb,
      ops=exp.attack_ops))(xf, y, keys)
  return np.asarray(jax.jit(logits_fn)(xf)), np.asarray(jax.jit(logits_fn)(x_adv))


def test_natural_pgd_against_direct_computation(exp, variables):
  x, y = evaluate_lib.eval_points(exp.ds, 0)
  ev = exp.eval
  npgd = natural_pgd.NaturalPGD(exp.model, exp.mesh, x, y, eps=ev.eps, step_size=ev.step_size,
                                steps=ev.steps, batch_size=ev.batch_size,
                                key=jax.random.PRNGKey(ev.seed), ops=exp.attack_ops)
  clean, adv = npgd.logits(variables)
  assert clean.shape == adv.shape == (100, 10)
  want_clean, want_adv = _direct(exp, variables, x, y)
  np.testing.assert_allclose(clean, want_clean, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-3, atol=1e-3)
  got = npgd.run(variables)
  assert got['natural_acc'] == np.mean(want_clean.argmax(-1) == y)
  assert got['pgd20_acc'] == np.mean(want_adv.argmax(-1) == y)
  assert got['pgd20_acc'] < got['natural_acc']  # the attack does something


def test_suite_predicts_once_and_calibrates_those_logits(exp, variables, monkeypatch):
  calls = []
  real = predict.predict

  def spy(*args, **kwargs):
    calls.append(1)
    calls.append(real(*args, **kwargs))
    return calls[-1]

  monkeypatch.setattr(predict, 'predict', spy)
  suite = evaluate_lib.Suite(exp, SUITE)
  out = suite.run(variables)
  assert calls.count(1) == 1  # natural, PGD-20 and ECE from one prediction pass
  clean, adv = calls[-1]
  y = exp.ds.test_labels
  assert out['natural_acc'] == metrics.masked_accuracy(clean, y)
  assert out['pgd20_acc'] == metrics.masked_accuracy(adv, y)
  assert out['ece_clean'] == metrics.calibration(clean, y)['ece']
  assert out['reliability']['adv'] == metrics.calibration(adv, y)
  assert list(out) == ['num_examples', 'natural_acc', 'pgd20_acc', 'ece_clean', 'ece_adv',
                       'reliability']
  only_natural = evaluate_lib.Suite(exp, ('natural',)).run(variables)
  assert list(only_natural) == ['num_examples', 'natural_acc']
  assert only_natural['natural_acc'] == out['natural_acc']


def _save(exp, workdir, variables_by_kind):
  state = experiment.initial_state(exp)
  for kind, (epoch, v) in variables_by_kind.items():
    checkpoints.save(workdir, kind, state.replace(params=v['params']), epoch)


def test_evaluate_best_and_final(exp, variables, tmp_path):
  wd = str(tmp_path / 'run')
  _save(exp, wd, {'best': (2, variables), 'final': (3, _scaled(variables, 3.0))})
  res = evaluate_lib.evaluate(_config(**{'eval.num_examples': 60}), wd, progress=False)
  assert res['best']['epoch'] == 2 and res['final']['epoch'] == 3
  assert res['best']['num_examples'] == res['final']['num_examples'] == 60
  suite = evaluate_lib.Suite(experiment.build(_config(**{'eval.num_examples': 60})), SUITE)
  assert res['best'] == dict(suite.run(variables), epoch=2)
  assert res['diff'] == results.diff(res['best'], res['final'])
  assert res['diff']['ece_clean'] == res['best']['ece_clean'] - res['final']['ece_clean'] != 0
  assert res['eval_config'] == {'eps': 0.1, 'step_size': 0.0125, 'steps': 3,
                                'suite': list(SUITE), 'autoattack_budget': 'smoke'}
  with open(os.path.join(wd, 'results.json')) as f:
    assert json.load(f) == res
  with open(os.path.join(wd, 'results.md')) as f:
    assert f.read() == results.markdown_table(res, title='run')


def test_checkpoint_of_a_bf16_run_evaluates_in_float32(exp, variables, tmp_path, monkeypatch):
  """model.compute_dtype='bfloat16' trains in bf16; its checkpoint is evaluated by the
  same weights computing in float32, under float32 matmul precision."""
  bf16 = experiment.build(_config(**{'model.compute_dtype': 'bfloat16'}))
  assert bf16.model.dtype == jax.numpy.bfloat16
  assert bf16.eval_model.dtype == jax.numpy.float32 and exp.eval_model is exp.model
  wd = str(tmp_path)
  _save(bf16, wd, {'best': (1, variables), 'final': (2, _scaled(variables, 2.0))})
  seen = []
  real = evaluate_lib.Suite.run
  monkeypatch.setattr(evaluate_lib.Suite, 'run', lambda self, v: seen.append(
      jax.config.jax_default_matmul_precision) or real(self, v))
  res = evaluate_lib.evaluate(_config(**{'model.compute_dtype': 'bfloat16'}), wd,
                              progress=False)
  assert seen == ['float32', 'float32'] and jax.config.jax_default_matmul_precision is None
  suite = evaluate_lib.Suite(exp, SUITE)  # the float32 run's evaluators
  for kind, v in (('best', variables), ('final', _scaled(variables, 2.0))):
    assert {k: res[kind][k] for k in ('natural_acc', 'pgd20_acc', 'ece_clean')} == {
        k: suite.run(v)[k] for k in ('natural_acc', 'pgd20_acc', 'ece_clean')}


def test_final_at_the_best_epoch_is_evaluated_once(exp, variables, tmp_path, monkeypatch):
  wd = str(tmp_path)
  _save(exp, wd, {'best': (3, variables), 'final': (3, variables)})
  runs = []
  real = evaluate_lib.Suite.run
  monkeypatch.setattr(evaluate_lib.Suite, 'run', lambda self, v: runs.append(1) or real(self, v))
  res = evaluate_lib.evaluate(_config(), wd, progress=False)
  assert len(runs) == 1
  assert res['final'] == res['best'] and res['final'] is not res['best']
  assert all(v == 0.0 for v in res['diff'].values())


def test_missing_final_fails_before_evaluating(exp, variables, tmp_path, monkeypatch):
  _save(exp, str(tmp_path), {'best': (1, variables)})
  monkeypatch.setattr(evaluate_lib.Suite, 'run', lambda *_: pytest.fail('evaluated'))
  with pytest.raises(errors.NoCheckpointError, match="no 'final' checkpoint"):
    evaluate_lib.evaluate(_config(), str(tmp_path), progress=False)


def test_transfer_from_the_model_itself_is_its_pgd_accuracy(exp, variables, tmp_path):
  """White-box transfer: PGD crafted on the same weights, same per-index keys."""
  src = tmp_path / 'source'
  _save(exp, str(src), {'final': (3, variables)})
  with open(src / 'config.json', 'w') as f:
    f.write(_config().to_json_best_effort())
  config = _config(**{'eval.suite': ('pgd20', 'transfer'), 'eval.transfer_from': str(src)})
  source = evaluate_lib.transfer_source(str(src))
  out = evaluate_lib.Suite(experiment.build(config), ('pgd20', 'transfer'), source).run(variables)
  assert out['transfer_acc'] == out['pgd20_acc']
  other = evaluate_lib.Suite(exp, ('transfer',), source).run(_scaled(variables, -1.0))
  assert list(other) == ['num_examples', 'transfer_acc'] and 0 <= other['transfer_acc'] <= 1


def test_evaluate_l2_autoattack_writes_examples_breakdown_and_no_state(exp, variables,
                                                                      tmp_path):
  """Issue 19: L2 AutoAttack in --mode=eval; adversarial examples per checkpoint, the
  per-attack breakdown in results.md, the resumable state removed once complete."""
  wd = str(tmp_path / 'run')
  _save(exp, wd, {'best': (2, variables), 'final': (3, _scaled(variables, 3.0))})
  config = _config(**{'eval.suite': ('natural', 'autoattack'), 'eval.num_examples': 20,
                      'eval.autoattack_examples': 20, 'eval.norm': 'L2', 'eval.eps': 0.5})
  res = evaluate_lib.evaluate(config, wd, progress=False)
  assert res['eval_config']['norm'] == 'L2'
  for kind in ('best', 'final'):
    r = res[kind]
    assert list(r['autoattack_after']) == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
    assert isinstance(r['autoattack_flags'], list) and r['autoattack_nan_count'] == 0
    assert r['autoattack_max_perturbation'] <= 0.5 + 1e-5
    with np.load(os.path.join(wd, 'adversarial', f'{kind}.npz')) as z:
      np.testing.assert_array_equal(z['index'], np.arange(20))
      assert z['x_adv'].dtype == np.float32 and z['x_adv'].shape == (20, 28, 28, 1)
      broken = z['broken_by'] != ''
      np.testing.assert_array_equal(broken, (z['clean_pred'] != z['adv_pred'])
                                    & (z['clean_pred'] == exp.ds.test_labels[:20]))
      assert np.mean(~broken & (z['adv_pred'] == exp.ds.test_labels[:20])) == pytest.approx(
          r['autoattack_acc'])
  assert not os.listdir(os.path.join(wd, 'eval_state'))
  with open(os.path.join(wd, 'results.md')) as f:
    md = f.read()
  assert md == results.markdown_table(res, title='run') + results.autoattack_breakdown(res)
  assert '| apgd-ce |' in md

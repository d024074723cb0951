"""The AutoAttack ensemble: feasibility, consistency of the reported accuracies, eps=0,
an affine model's closed-form robust accuracy, strength, determinism, one compilation."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from attack_support import OPS, optimised_autoattack, small_cnn  # noqa: F401
from bench.attacks import numpy_init
from conftest import O2
from sglr_jax.attacks import apgd, square
from sglr_jax.attacks import autoattack as aa
from sglr_jax.attacks.autoattack import programs, runner

# Few iterations, queries and targets: the full standard budget is for evaluations.
SMALL = aa.AutoAttackConfig(apgd_n_iter=20, apgd_t_n_iter=10, apgd_t_n_target_classes=3,
                            fab_n_iter=10, fab_n_target_classes=3, square_n_queries=100,
                            square_queries_per_call=25)
BATCH = 32


@pytest.fixture(scope='module', autouse=True)
def _optimised(optimised_autoattack):  # pylint: disable=unused-argument
  yield


@pytest.fixture(scope='module')
def cnn():
  """Untrained tiny CNN, 40 points (two batches of 32, the second padded); labels are
  its clean predictions with every fourth one changed, so clean accuracy is 75%."""
  model = small_cnn(width=8)
  variables = numpy_init(model, (1, 28, 28, 1), seed=3)
  logits_fn = lambda z: model.apply(variables, z, train=False)
  x = np.random.default_rng(3).uniform(size=(40, 28, 28, 1)).astype(np.float32)
  y = aa.predict(logits_fn, x, BATCH)
  y[::4] = (y[::4] + 1) % 10
  return logits_fn, x, y


@pytest.fixture(scope='module')
def cnn_run(cnn):
  """The ensemble at 1/255, where every attack still has robust points to work on."""
  logits_fn, x, y = cnn
  return aa.run_autoattack(logits_fn, x, y, 1 / 255, key=jax.random.key(0),
                           batch_size=BATCH, config=SMALL, progress=False, ops=OPS)


def _check_result(res, logits_fn, x, y, eps):
  x_adv, robust = res['x_adv'], res['robust']
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert not np.isnan(x_adv).any() and x_adv.min() >= 0 and x_adv.max() <= 1
  assert np.abs(x_adv - x).reshape(len(x), -1).max() <= eps + 1e-6
  np.testing.assert_array_equal(x_adv[robust], x[robust])        # robust: returned as given
  correct = aa.predict(logits_fn, x_adv, BATCH) == y
  np.testing.assert_array_equal(correct, robust)                 # flags = model on x_adv
  accs = list(res['robust_acc_after'].values())
  assert list(res['robust_acc_after']) == list(aa.STANDARD_ATTACKS)
  assert accs[-1] == pytest.approx(correct.mean())
  assert res['clean_acc'] == pytest.approx(np.mean(aa.predict(logits_fn, x, BATCH) == y))
  assert all(a >= b for a, b in zip([res['clean_acc']] + accs, accs))  # never increases


def test_ensemble_feasible_and_consistent(cnn, cnn_run):
  logits_fn, x, y = cnn
  _check_result(cnn_run, logits_fn, x, y, 1 / 255)
  accs = cnn_run['robust_acc_after']
  assert cnn_run['clean_acc'] == 0.75
  assert 0 < accs['square'] < accs['apgd-ce'] < 0.75            # not vacuous


def test_ensemble_deterministic_and_compiled_once(cnn, cnn_run):
  logits_fn, x, y = cnn
  compiled = programs.traced_programs()
  again = aa.run_autoattack(logits_fn, x, y, 1 / 255, key=jax.random.key(0),
                            batch_size=BATCH, config=SMALL, progress=False, ops=OPS)
  np.testing.assert_array_equal(again['x_adv'], cnn_run['x_adv'])
  assert again['robust_acc_after'] == cnn_run['robust_acc_after']
  other = aa.run_autoattack(logits_fn, x[:37], y[:37], 1.5 / 255, key=jax.random.key(1),
                            batch_size=BATCH, config=SMALL, progress=True, ops=OPS)
  # new data size, eps, key and robust set: nothing recompiles
  assert programs.traced_programs() == compiled
  _check_result(other, logits_fn, x[:37], y[:37], 1.5 / 255)
  assert not np.array_equal(other['x_adv'], cnn_run['x_adv'][:37])


def test_warm_up_compiles_every_program_the_attacks_then_call(cnn):
  """The up-front (parallel, ahead-of-time) compilation builds exactly the programs of
  the real calls: for a config not seen before it compiles Square's 2 programs and the
  3 runs' (the predictions' program is the cnn's), and the ensemble after it compiles
  nothing (counted as XLA compilations, with the persistent cache off)."""
  logits_fn, x, y = cnn
  cfg = dataclasses.replace(SMALL, square_p_init=0.7)  # new static argument: new programs
  key = jax.random.PRNGKey(5)  # a raw key, as --mode=eval passes
  compiles = []
  listener = lambda event, _, **kw: compiles.append(event) if 'backend_compile' in event else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  traced = programs.traced_programs()
  try:
    model_fn, variables = programs.as_model(logits_fn, None)
    runner.warm_up(model_fn, variables, cfg, aa.STANDARD_ATTACKS, x.shape[1:], BATCH,
                   jax.random.fold_in(key, 0), None, ops=OPS)
    warm = len(compiles)
    assert programs.traced_programs() >= traced + 5  # the count sees new programs
    aa.run_autoattack(logits_fn, x, y, 1 / 255, key=key, batch_size=BATCH, config=cfg,
                      progress=False, ops=OPS)
  finally:
    jax.config.update('jax_enable_compilation_cache', cache)
    jax.monitoring.unregister_event_duration_listener(listener)
  assert warm >= 5
  assert compiles[warm:] == []


def test_variables_as_an_argument_match_and_a_new_checkpoint_compiles_nothing(cnn, cnn_run):
  """--mode=eval passes each checkpoint's variables as an argument of the programs
  (``variables=``): the numbers of the closed-over model, and the second checkpoint
  reuses every compiled program."""
  _, x, y = cnn
  model = small_cnn(width=8)
  model_fn = lambda v, z: model.apply(v, z, train=False)
  run = lambda seed: aa.run_autoattack(
      model_fn, x, y, 1 / 255, key=jax.random.key(0), batch_size=BATCH, config=SMALL,
      progress=False, variables=numpy_init(model, (1, 28, 28, 1), seed=seed), ops=OPS)
  same = run(3)  # the weights of the cnn fixture
  np.testing.assert_array_equal(same['robust'], cnn_run['robust'])
  np.testing.assert_allclose(same['x_adv'], cnn_run['x_adv'], atol=1e-5, rtol=0)
  compiled = programs.traced_programs()
  other = run(4)
  assert programs.traced_programs() == compiled
  assert not np.array_equal(other['x_adv'], same['x_adv'])  # other weights, other points


def test_eps_zero_gives_clean_accuracy(cnn):
  logits_fn, x, y = cnn
  res = aa.run_autoattack(logits_fn, x, y, 0.0, key=jax.random.key(0), batch_size=BATCH,
                          config=SMALL, progress=False, ops=OPS)
  assert all(a == res['clean_acc'] for a in res['robust_acc_after'].values())
  np.testing.assert_array_equal(res['x_adv'], x)


def test_untrained_model_near_zero_at_8_255(cnn):
  logits_fn, x, y = cnn
  res = aa.run_autoattack(logits_fn, x, y, 8 / 255, key=jax.random.key(0), batch_size=BATCH,
                          config=SMALL, progress=False, ops=OPS)
  _check_result(res, logits_fn, x, y, 8 / 255)
  assert res['robust_acc_after']['square'] <= 0.05


@pytest.mark.parametrize('name,eps', [('apgd-t', 1 / 255), ('square', 6 / 255)])
def test_regathered_runs_match_the_single_call_attack(cnn, name, eps):
  """The ensemble regathers the robust points between target classes (and every few
  Square queries) into new batches; per point this must change nothing: same keys,
  same runs, same result as one call of the attack on all points."""
  logits_fn, x, y = cnn
  key = jax.random.key(0)
  akey = jax.random.fold_in(key, aa.ATTACKS.index(name))
  ids = np.arange(len(x), dtype=np.int32)
  if name == 'apgd-t':
    fn = lambda x, y: apgd.apgd_targeted_attack(
        logits_fn, x, y, eps=eps, key=akey, n_iter=SMALL.apgd_t_n_iter, example_ids=ids,
        n_target_classes=SMALL.apgd_t_n_target_classes, ops=OPS)
  else:
    fn = lambda x, y: square.square_attack(logits_fn, x, y, eps=eps, key=akey,
                                           n_queries=SMALL.square_n_queries, example_ids=ids)
  direct = np.asarray(jax.jit(fn, compiler_options=O2)(x, y))
  res = aa.run_autoattack(logits_fn, x, y, eps, key=key, batch_size=BATCH, attacks=(name,),
                          config=SMALL, progress=False, ops=OPS)
  np.testing.assert_array_equal(aa.predict(logits_fn, direct, BATCH) == y, res['robust'])
  np.testing.assert_allclose(res['x_adv'], direct, atol=1e-6, rtol=0)
  assert res['robust'].mean() < res['clean_acc']


# ------------------------------------------------------------------------ affine model

def closed_form_robust(wmat, bias, x, y, eps):
  """Linf robustness of ``z = x W + b`` per point: for every wrong class t minimise
  ``(W_y - W_t) . (x + d) + b_y - b_t`` over the box ``|d| <= eps, 0 <= x + d <= 1``
  (coordinate-wise: the lower end where the weight difference is positive). Returns the
  smallest such margin per point (> 0: robust)."""
  flat = x.reshape(len(x), -1).astype(np.float64)
  lo, hi = np.maximum(-eps, -flat), np.minimum(eps, 1 - flat)
  worst = np.full(len(x), np.inf)
  for t in range(wmat.shape[1]):
    c = (wmat[:, y] - wmat[:, [t]]).T.astype(np.float64)          # [N, D]
    m = (c * (flat + np.where(c > 0, lo, hi))).sum(1) + bias[y] - bias[t]
    worst = np.where(y == t, worst, np.minimum(worst, m))
  clean = (flat @ wmat + bias).argmax(1) == y
  return np.where(clean, worst, -np.inf)


def test_affine_model_closed_form_robust_accuracy():
  rng = np.random.default_rng(0)
  n, hw, k = 64, 6, 10
  wmat = rng.normal(size=(hw * hw, k)).astype(np.float32)
  bias = rng.normal(size=k).astype(np.float32) * 0.5
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ wmat + bias
  x = rng.uniform(size=(n, hw, hw, 1)).astype(np.float32)
  y = (x.reshape(n, -1) @ wmat + bias).argmax(1)
  y[::8] = (y[::8] + 3) % k                                       # a few clean errors
  eps = 0.03
  margin = closed_form_robust(wmat, bias, x, y, eps)
  decided = np.abs(margin) > 1e-3                                 # away from float ties
  assert decided.mean() > 0.9
  exact = (margin > 0)[decided]
  assert 0.2 < exact.mean() < 0.8
  cfg = aa.AutoAttackConfig(apgd_n_iter=20, apgd_t_n_iter=20, fab_n_iter=20,
                            square_n_queries=100)                 # all 9 targets
  res = aa.run_autoattack(logits_fn, x, y, eps, key=jax.random.key(0), batch_size=BATCH,
                          config=cfg, progress=False, ops=OPS)
  _check_result(res, logits_fn, x, y, eps)
  # sound (never below the truth) and, on this small case, exact
  assert (res['robust'][decided] >= exact).all()
  np.testing.assert_array_equal(res['robust'][decided], exact)

"""AutoAttack's sanity checks: each flag is raised by a model built to trip it, and a
normal (affine) model raises none; the flags reach the result."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attack_support import OPS
from sglr_jax.attacks import autoattack as aa
from sglr_jax.attacks.autoattack import checks

N, HW, K = 48, 6, 10
TINY = aa.AutoAttackConfig(apgd_n_iter=10, apgd_t_n_iter=10, apgd_t_n_target_classes=3,
                           fab_n_iter=10, fab_n_target_classes=3, square_n_queries=200,
                           square_queries_per_call=100)


def _affine(k=K, seed=0):
  rng = np.random.default_rng(seed)
  wmat = jnp.asarray(rng.normal(size=(HW * HW, k)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=k), jnp.float32)
  x = rng.uniform(size=(N, HW, HW, 1)).astype(np.float32)
  fn = lambda z: z.reshape(z.shape[0], -1) @ wmat + bias
  return fn, x, np.asarray(fn(x)).argmax(1)


def _run(fn, x, y, eps=0.03, attacks=('apgd-ce',), cfg=TINY):
  return aa.run_autoattack(fn, x, y, eps, key=jax.random.key(0), batch_size=16,
                           attacks=attacks, config=cfg, progress=False, ops=OPS)


def _names(res):
  return {f['check'] for f in res['flags']}


def test_normal_model_raises_no_flag():
  fn, x, y = _affine()
  res = _run(fn, x, y, attacks=aa.STANDARD_ATTACKS)
  assert res['flags'] == []
  assert res['nan_count'] == 0 and 0 < res['max_perturbation'] <= 0.03 + 1e-6


def test_randomised_model():
  fn, x, y = _affine()
  noise = lambda z: jax.pure_callback(
      lambda: np.random.default_rng().normal(size=(z.shape[0], K)).astype(np.float32),
      jax.ShapeDtypeStruct((z.shape[0], K), jnp.float32))
  with pytest.warns(checks.AutoAttackFlag, match='randomized'):
    res = _run(lambda z: fn(z) + noise(z), x, y)
  assert 'randomized' in _names(res)


def test_probability_outputs():
  fn, x, y = _affine()
  with pytest.warns(checks.AutoAttackFlag, match='probabilities'):
    res = _run(lambda z: jax.nn.softmax(fn(z)), x, y)
  assert 'probabilities' in _names(res) and 'randomized' not in _names(res)


def _quantised(fn, levels=4):
  """``fn`` on the input rounded to ``levels`` steps: zero input gradient everywhere."""
  return lambda z: fn(jnp.round(z * levels) / levels)


def test_zero_gradients():
  fn, x, y = _affine()
  with pytest.warns(checks.AutoAttackFlag, match='zero_gradients'):
    res = _run(_quantised(fn), x, y)
  assert 'zero_gradients' in _names(res)


def test_square_beating_white_box_attacks():
  """Quantised input: APGD sees no gradient, the score-based Square walks across the steps."""
  fn, x, y = _affine()
  with pytest.warns(checks.AutoAttackFlag):
    res = _run(_quantised(fn), x, y, eps=0.2, attacks=('apgd-ce', 'square'))
  after = res['robust_acc_after']
  assert after['square'] < after['apgd-ce'] - 0.002
  assert 'square_beats_white_box' in _names(res)


def test_too_few_classes():
  fn, x, y = _affine(k=3)
  with pytest.warns(checks.AutoAttackFlag, match='n_classes'), pytest.raises(ValueError):
    _run(fn, x, y, attacks=('apgd-ce', 'apgd-t'))
  assert checks.check_n_classes(10, ('apgd-t', 'fab-t'), 9, 9) == []
  with pytest.warns(checks.AutoAttackFlag):
    assert len(checks.check_n_classes(5, ('apgd-t', 'fab-t'), 9, 9)) == 2


def test_perturbation_and_nan_summary():
  x = np.zeros((3, 2, 2, 1), np.float32)
  x_adv = x.copy()
  x_adv[0, 0, 0, 0] = 0.3
  x_adv[1, 0, 0, 0] = 0.4
  x_adv[1, 1, 1, 0] = 0.3                                        # L2 norm 0.5
  x_adv[2, 1, 0, 0] = np.nan
  s = checks.summary(x_adv, x, 'L2')
  assert s == {'max_perturbation': pytest.approx(0.5), 'nan_count': 1}
  assert checks.summary(x_adv, x, 'Linf')['max_perturbation'] == pytest.approx(0.4)
  with pytest.warns(checks.AutoAttackFlag):
    found = checks.check_summary(s, 0.45, 'L2')
  assert [f['check'] for f in found] == ['perturbation_too_large', 'nan']
  assert checks.check_summary(dict(s, nan_count=0), 0.5, 'L2') == []


def test_a_flag_is_warned_on_process_0_only(monkeypatch):
  with pytest.warns(checks.AutoAttackFlag, match="check 'nan'"):
    assert checks.check_summary({'max_perturbation': 0.0, 'nan_count': 2}, 0.1, 'Linf')
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  with warnings.catch_warnings():
    warnings.simplefilter('error')          # any warning fails the test
    flags = checks.check_summary({'max_perturbation': 0.0, 'nan_count': 2}, 0.1, 'Linf')
  assert [f['check'] for f in flags] == ['nan']             # still in the result

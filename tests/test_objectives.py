"""TRADES, LS and TE losses against hand-computed values on 3-class logits; the registry
and the composition with SGLR."""
import jax.numpy as jnp
import numpy as np
import pytest

from sglr_jax import objectives, sglr_table
from sglr_jax.objectives import at, ls, te, trades

E1 = jnp.array([[1.0, 0.0, 0.0]])  # softmax = [0.576117, 0.211942, 0.211942]
E2 = jnp.array([[0.0, 1.0, 0.0]])  # softmax = [0.211942, 0.576117, 0.211942]
ONEHOT0 = jnp.array([[1.0, 0.0, 0.0]])


def hp(name, **kw):
  return objectives.ObjectiveParams(name=name, eps=0.1, step_size=0.01, steps=1, **kw)


def test_trades_loss():
  # CE(clean, y=0) = -log 0.576117 = 0.551445
  # KL(clean || adv) = (0.576117 - 0.211942) * log(e) = 0.364175; beta = 6
  got = trades.loss(hp('trades', beta=6.0), E2, E1, ONEHOT0)
  np.testing.assert_allclose(got, [0.551445 + 6 * 0.364175], atol=1e-5)


def test_label_smoothing_target_and_loss():
  t = objectives.base_targets(hp('ls', ls_eps=0.3), jnp.array([0]), 3)
  np.testing.assert_allclose(t, [[0.8, 0.1, 0.1]], atol=1e-7)
  # 0.8 * 0.551445 + 0.2 * 1.551445
  got = ls.OBJECTIVE.loss(hp('ls', ls_eps=0.3), E1, None, t)
  np.testing.assert_allclose(got, [0.751445], atol=1e-5)


def test_temporal_ensembling_loss_and_rampup():
  q = jnp.array([[0.5, 0.25, 0.25]])
  # CE 0.551445 + 2 * ((0.576117 - 0.5)^2 + 2 (0.211942 - 0.25)^2) = 0.551445 + 2 * 0.0086906
  got = te.loss(hp('te', te_weight=2.0), E1, None, ONEHOT0, rows=q)
  np.testing.assert_allclose(got, [0.568826], atol=1e-5)
  # ramp-up: epoch 5 of 10 -> 2 * exp(-5 * 0.25) = 0.573010
  w = te.weight(hp('te', te_weight=2.0, te_rampup_epochs=10), 5)
  np.testing.assert_allclose(w, 0.573010, atol=1e-6)


def test_temporal_ensembling_table_update():
  # q <- 0.9 q + 0.1 softmax(E1) = [0.45 + 0.0576117, 0.225 + 0.0211942, 0.225 + 0.0211942]
  q = jnp.array([[0.5, 0.25, 0.25]])
  got = te.update_rows(hp('te', te_momentum=0.9), q, E1)
  np.testing.assert_allclose(got, [[0.507612, 0.246194, 0.246194]], atol=1e-6)


@pytest.mark.parametrize('name', ['at', 'trades'])
def test_hard_target_is_one_hot(name):
  t = objectives.base_targets(hp(name), jnp.array([2, 0]), 3)
  np.testing.assert_array_equal(t, jnp.eye(3)[jnp.array([2, 0])])


def test_registry_and_tables():
  assert objectives.OBJECTIVES == ('at', 'ls', 'trades', 'te', 'kd')
  sp = sglr_table.SGLRParams(momentum=0.9, lam=0.8, temperature=1.0, alpha=1.0, start_epoch=0)
  assert [objectives.uses_table(hp(n), None) for n in objectives.OBJECTIVES] == [
      False, False, False, True, False]
  assert [objectives.uses_teachers(hp(n)) for n in objectives.OBJECTIVES] == [
      False, False, False, False, True]
  assert all(objectives.uses_table(hp(n), sp) for n in objectives.OBJECTIVES)
  with pytest.raises(ValueError, match='objective.name'):
    objectives.get('mart')


class _Model:
  """A fake train-mode model: logits are fixed per input, every pass counts itself in
  the BatchNorm statistics, so the order and number of passes are visible."""

  def __init__(self, logits):
    self.logits = logits  # {input name: [B, K]}

  def apply(self, variables, x):
    stats = variables['batch_stats']
    return self.logits[x], {'batch_stats': {'passes': stats['passes'] + (x,)}}


VARIABLES = {'params': {}, 'batch_stats': {'passes': ()}}


def test_trades_runs_the_clean_pass_first_and_chains_its_statistics():
  m = _Model({'x': E1, 'x_adv': E2})
  t = objectives.train_loss(hp('trades'), None, m.apply, VARIABLES, 'x', 'x_adv', ONEHOT0,
                            None, 0)
  assert t.batch_stats == {'passes': ('x', 'x_adv')}
  np.testing.assert_allclose(t.per_example, [0.551445 + 6 * 0.364175], atol=1e-5)
  assert t.rows is None


@pytest.mark.parametrize('name,passes', [('at', ('x_adv',)), ('trades', ('x', 'x_adv'))])
def test_sglr_adds_a_clean_pass_only_where_the_objective_has_none(name, passes):
  """AT + SGLR: an extra clean pass whose statistics are dropped; TRADES' is reused.
  alpha = 1, m = 0, lam = 1: the target is softmax(f(x')), the new row too."""
  m = _Model({'x': E1, 'x_adv': E2})
  sp = sglr_table.SGLRParams(momentum=0.0, lam=1.0, temperature=1.0, alpha=1.0, start_epoch=0)
  rows = jnp.array([[1.0, 0.0, 0.0]])
  t = objectives.train_loss(hp(name), sp, m.apply, VARIABLES, 'x', 'x_adv', ONEHOT0, rows,
                            jnp.asarray(0))
  assert t.batch_stats == {'passes': passes}
  np.testing.assert_allclose(t.rows, [[0.211942, 0.576117, 0.211942]], atol=1e-6)
  if name == 'at':  # CE(f(x'), softmax f(x')) = entropy of [0.211942, 0.576117, 0.211942]
    p = np.array([0.211942, 0.576117, 0.211942])
    np.testing.assert_allclose(t.per_example, [-np.sum(p * np.log(p))], atol=1e-5)


def test_sglr_before_start_epoch_keeps_target_and_rows():
  m = _Model({'x': E1, 'x_adv': E2})
  sp = sglr_table.SGLRParams(momentum=0.0, lam=1.0, temperature=1.0, alpha=1.0, start_epoch=2)
  rows = jnp.array([[0.5, 0.25, 0.25]])
  t = objectives.train_loss(hp('at'), sp, m.apply, VARIABLES, 'x', 'x_adv', ONEHOT0, rows,
                            jnp.asarray(1))
  np.testing.assert_array_equal(t.rows, rows)
  np.testing.assert_allclose(t.per_example, at.loss(hp('at'), E2, None, ONEHOT0), atol=0)


def test_kd_composes_with_sglr_target():
  """KD + SGLR: the CE term takes the refined target (alpha = 1, m = 0, lam = 1:
  softmax f(x')), the teacher term is added; without teachers 'kd' is PGD-AT."""
  from sglr_jax.objectives import kd  # pylint: disable=g-import-not-at-top
  m = _Model({'x': E1, 'x_adv': E2})
  sp = sglr_table.SGLRParams(momentum=0.0, lam=1.0, temperature=1.0, alpha=1.0, start_epoch=0)
  rows = jnp.array([[1.0, 0.0, 0.0]])
  teacher = jnp.array([[3.0, -1.0, 0.5]])
  p = np.array([0.211942, 0.576117, 0.211942])
  h = hp('kd')
  t = objectives.train_loss(h, sp, m.apply, VARIABLES, 'x', 'x_adv', ONEHOT0, rows,
                            jnp.asarray(0), (teacher,))
  want = h.kd_ce_weight * -np.sum(p * np.log(p)) + float(kd.distillation(h, E2, (teacher,))[0])
  np.testing.assert_allclose(t.per_example, [want], atol=1e-5)
  plain = objectives.train_loss(h, None, m.apply, VARIABLES, 'x', 'x_adv', ONEHOT0, None, 0)
  at = objectives.train_loss(hp('at'), None, m.apply, VARIABLES, 'x', 'x_adv', ONEHOT0, None, 0)
  np.testing.assert_array_equal(plain.per_example, at.per_example)

"""TRADES, LS and TE losses against hand-computed values on 3-class logits."""
import jax.numpy as jnp
import numpy as np
import pytest

from sglr_jax import objectives

E1 = jnp.array([[1.0, 0.0, 0.0]])  # softmax = [0.576117, 0.211942, 0.211942]
E2 = jnp.array([[0.0, 1.0, 0.0]])  # softmax = [0.211942, 0.576117, 0.211942]
ONEHOT0 = jnp.array([[1.0, 0.0, 0.0]])


def hp(name, **kw):
  return objectives.ObjectiveParams(name=name, eps=0.1, step_size=0.01, steps=1, **kw)


def test_trades_loss():
  # CE(clean, y=0) = -log 0.576117 = 0.551445
  # KL(clean || adv) = (0.576117 - 0.211942) * log(e) = 0.364175; beta = 6
  got = objectives.loss(hp('trades', beta=6.0), E2, E1, ONEHOT0)
  np.testing.assert_allclose(got, [0.551445 + 6 * 0.364175], atol=1e-5)


def test_label_smoothing_target_and_loss():
  t = objectives.base_targets(hp('ls', ls_eps=0.3), jnp.array([0]), 3)
  np.testing.assert_allclose(t, [[0.8, 0.1, 0.1]], atol=1e-7)
  # 0.8 * 0.551445 + 0.2 * 1.551445
  got = objectives.loss(hp('ls', ls_eps=0.3), E1, None, t)
  np.testing.assert_allclose(got, [0.751445], atol=1e-5)


def test_temporal_ensembling_loss_and_rampup():
  q = jnp.array([[0.5, 0.25, 0.25]])
  # CE 0.551445 + 2 * ((0.576117 - 0.5)^2 + 2 (0.211942 - 0.25)^2) = 0.551445 + 2 * 0.0086906
  got = objectives.loss(hp('te', te_weight=2.0), E1, None, ONEHOT0, ensemble=q)
  np.testing.assert_allclose(got, [0.568826], atol=1e-5)
  # ramp-up: epoch 5 of 10 -> 2 * exp(-5 * 0.25) = 0.573010
  w = objectives.te_weight(hp('te', te_weight=2.0, te_rampup_epochs=10), 5)
  np.testing.assert_allclose(w, 0.573010, atol=1e-6)


@pytest.mark.parametrize('name', ['at', 'trades'])
def test_hard_target_is_one_hot(name):
  t = objectives.base_targets(hp(name), jnp.array([2, 0]), 3)
  np.testing.assert_array_equal(t, jnp.eye(3)[jnp.array([2, 0])])

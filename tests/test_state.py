"""Learning-rate schedules and the optimizer against hand-computed values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from sglr_jax import state


def test_piecewise_schedule_decays_after_the_named_epochs():
  c = tiny_config(**{'train.epochs': 10, 'schedule.decay_epochs': (4, 7)})
  s = state.lr_schedule(c, steps_per_epoch=5)
  lrs = [float(s(e * 5)) for e in range(10)]  # first step of each 0-based epoch
  np.testing.assert_allclose(lrs, [0.1] * 4 + [0.01] * 3 + [0.001] * 3, rtol=1e-6)


def test_cosine_schedule():
  c = tiny_config(**{'train.epochs': 10, 'schedule.name': 'cosine'})
  s = state.lr_schedule(c, steps_per_epoch=5)
  assert float(s(0)) == pytest.approx(0.1)
  assert float(s(25)) == pytest.approx(0.05, rel=1e-5)  # half way: 0.1 * (1 + cos(pi/2)) / 2
  assert float(s(50)) == pytest.approx(0.0, abs=1e-7)


def test_sgd_with_coupled_weight_decay_matches_pytorch_update():
  """PyTorch SGD: buf = g + wd * p; p -= lr * buf (first step, momentum buffer = buf)."""
  c = tiny_config(**{'optim.weight_decay': 0.1})
  tx, _ = state.create_optimizer(c, steps_per_epoch=5)
  p = {'w': jnp.array([1.0, -2.0])}
  g = {'w': jnp.array([0.5, 0.5])}
  u, opt = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(u['w'], -0.1 * (g['w'] + 0.1 * p['w']), rtol=1e-6)
  # second step: buf = 0.9 * buf + (g + wd p)
  u2, _ = tx.update(g, opt, p)
  np.testing.assert_allclose(u2['w'], -0.1 * (1.9 * (g['w'] + 0.1 * p['w'])), rtol=1e-6)

"""Learning-rate schedules and the optimizer against hand-computed values; the initial state."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from sglr_jax import experiment
from sglr_jax.training import state


def _schedule(config, steps_per_epoch):
  return state.lr_schedule(config.optim.lr, experiment.schedule_params(config), steps_per_epoch)


def test_piecewise_schedule_decays_after_the_named_epochs():
  c = tiny_config(**{'train.epochs': 10, 'schedule.decay_epochs': (4, 7)})
  s = _schedule(c, steps_per_epoch=5)
  lrs = [float(s(e * 5)) for e in range(10)]  # first step of each 0-based epoch
  np.testing.assert_allclose(lrs, [0.1] * 4 + [0.01] * 3 + [0.001] * 3, rtol=1e-6)


def test_cosine_schedule():
  c = tiny_config(**{'train.epochs': 10, 'schedule.name': 'cosine'})
  s = _schedule(c, steps_per_epoch=5)
  assert float(s(0)) == pytest.approx(0.1)
  assert float(s(25)) == pytest.approx(0.05, rel=1e-5)  # half way: 0.1 * (1 + cos(pi/2)) / 2
  assert float(s(50)) == pytest.approx(0.0, abs=1e-7)


def test_sgd_with_coupled_weight_decay_matches_pytorch_update():
  """PyTorch SGD: buf = g + wd * p; p -= lr * buf (first step, momentum buffer = buf)."""
  c = tiny_config(**{'optim.weight_decay': 0.1})
  tx, _ = state.create_optimizer(experiment.optim_params(c), experiment.schedule_params(c),
                                 steps_per_epoch=5)
  p = {'w': jnp.array([1.0, -2.0])}
  g = {'w': jnp.array([0.5, 0.5])}
  u, opt = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(u['w'], -0.1 * (g['w'] + 0.1 * p['w']), rtol=1e-6)
  # second step: buf = 0.9 * buf + (g + wd p)
  u2, _ = tx.update(g, opt, p)
  np.testing.assert_allclose(u2['w'], -0.1 * (1.9 * (g['w'] + 0.1 * p['w'])), rtol=1e-6)


def test_train_state_starts_with_one_hot_table_padded_rows_and_no_best():
  c = tiny_config()
  exp = experiment.build(c)
  st = experiment.initial_state(exp)
  n = len(exp.ds.train_labels)
  table = np.asarray(st.label_table)
  np.testing.assert_array_equal(table[:n], np.eye(10)[exp.ds.train_labels])
  assert table.shape == (n, 10) and int(st.step) == 0 and int(st.epoch) == 0
  assert float(st.best_metric) == -1.0
  padded = state.create_train_state(exp.model, st.tx, exp.ds.image_shape, exp.ds.train_labels,
                                    10, jax.random.PRNGKey(0), table_rows=n + 3,
                                    compiler_options=exp.init_options)
  assert padded.label_table.shape == (n + 3, 10)
  np.testing.assert_array_equal(np.asarray(padded.label_table)[n:], 0)
  # the same key gives the same parameters (init is a function of the seed alone)
  for a, b in zip(jax.tree.leaves(st.params), jax.tree.leaves(padded.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

"""The train step: which table rows change, warm-up, gradient norm."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from sglr_jax import data, experiment, mesh as mesh_lib
from sglr_jax.training import step as step_lib


@pytest.fixture(scope='module')
def setup():
  s = experiment.build(tiny_config('mnist_sglr'))
  st = experiment.initial_state(s)
  step = step_lib.make_train_step(s.model, s.step, s.mesh, st, ops=s.attack_ops)
  batch = next(data.train_batches(s.ds, 0, 0, s.train.batch_size))
  return s, st, step, batch


def test_only_batch_rows_change_when_active(setup):
  s, st, step, batch = setup
  st = st.replace(epoch=jnp.asarray(s.step.sglr.start_epoch, jnp.int32))
  before = np.asarray(st.label_table)
  new, _ = step(jax.tree.map(jnp.copy, st), mesh_lib.to_global(batch, s.mesh))
  after = np.asarray(new.label_table)
  changed = np.flatnonzero(np.any(before != after, axis=1))
  np.testing.assert_array_equal(np.sort(changed), np.sort(batch['index']))
  np.testing.assert_allclose(after.sum(1), 1.0, atol=1e-5)  # rows stay distributions


def test_warm_up_leaves_table_untouched(setup):
  s, st, step, batch = setup
  assert int(st.epoch) < s.step.sglr.start_epoch
  new, m = step(jax.tree.map(jnp.copy, st), mesh_lib.to_global(batch, s.mesh))
  np.testing.assert_array_equal(new.label_table, st.label_table)
  assert int(m['count']) == len(batch['index'])


def test_grad_norm_is_norm_of_applied_gradient(setup):
  """Recover the gradient from the SGD update (first step: momentum buffer = grad + wd p)."""
  s, st, step, batch = setup
  new, m = step(jax.tree.map(jnp.copy, st), mesh_lib.to_global(batch, s.mesh))
  lr, wd = s.optim.lr, s.optim.weight_decay
  grads = jax.tree.map(lambda p0, p1: (p0 - p1) / lr - wd * p0, st.params, new.params)
  np.testing.assert_allclose(float(m['grad_norm']), float(optax.tree.norm(grads)), rtol=2e-3)
  assert float(m['grad_norm']) > 0

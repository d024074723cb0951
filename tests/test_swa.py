"""Stochastic weight averaging: the average is the mean of the snapshots taken on
schedule, its BatchNorm statistics are the mean of the batch statistics, it survives a
checkpoint, and evaluation uses it."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from sglr_jax import checkpoints, data, experiment, mesh as mesh_lib
from sglr_jax.mesh import AXIS
from sglr_jax.training import step as step_lib, swa


def test_schedule():
  sp = swa.SWAParams(start_step=4, every_steps=2)
  taken = [s for s in range(12) if bool(swa.due(sp, jnp.asarray(s)))]
  assert taken == [6, 8, 10]


def test_collect_is_the_mean_of_the_snapshots():
  rng = np.random.default_rng(0)
  snaps = [{'a': rng.normal(size=(3, 2)).astype(np.float32),
            'b': rng.normal(size=4).astype(np.float32)} for _ in range(5)]
  avg = jax.tree.map(jnp.zeros_like, snaps[0])
  count = jnp.zeros((), jnp.int32)
  for i, p in enumerate(snaps):
    avg, count = swa.collect(avg, count, p, jnp.asarray(i != 2))  # the third is skipped
    if i == 0:
      jax.tree.map(np.testing.assert_array_equal, avg, p)  # the first one exactly
  kept = [p for i, p in enumerate(snaps) if i != 2]
  assert int(count) == 4
  for k in ('a', 'b'):
    np.testing.assert_allclose(avg[k], np.mean([p[k] for p in kept], 0), rtol=1e-6, atol=1e-7)


class _DenseBN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    h = nn.Dense(3)(x.reshape(x.shape[0], -1))
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=AXIS)(h)


def test_recomputed_statistics_are_the_mean_of_the_batch_statistics():
  model = _DenseBN()
  mesh = mesh_lib.make_mesh(1)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 8, 2, 2, 1), dtype=np.uint8)  # 3 batches of 8
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 1)), train=False)
  stale = jax.tree.map(lambda a: a + 7.0, variables['batch_stats'])  # must not matter
  got = swa.recompute_batch_stats(swa.make_bn_pass(model, mesh), variables['params'], stale,
                                  ({'image': b} for b in images))
  p = variables['params']['Dense_0']
  h = [(b.reshape(8, -1) / 255.0) @ np.asarray(p['kernel']) + np.asarray(p['bias'])
       for b in images]
  np.testing.assert_allclose(got['BatchNorm_0']['mean'], np.mean([x.mean(0) for x in h], 0),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got['BatchNorm_0']['var'], np.mean([x.var(0) for x in h], 0),
                             rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def run():
  """Four steps of PGD-AT with a snapshot every second step from step 0 on; the
  parameters after every step."""
  s = experiment.build(tiny_config('mnist_at', **{
      'train.swa_start_epoch': 0, 'train.swa_every_steps': 2, 'parallel.num_devices': 1}))
  st = experiment.initial_state(s)
  step = step_lib.make_train_step(s.model, s.step, s.mesh, st, ops=s.attack_ops)
  after = []
  for batch in data.train_batches(s.ds, 0, 0, s.train.batch_size):
    st, _ = step(st, mesh_lib.to_global(batch, s.mesh))
    after.append(jax.tree.map(np.asarray, st.params))
  return s, st, after


def test_average_of_a_run_is_the_mean_of_its_snapshots(run):
  _, st, after = run
  assert len(after) == 4 and int(st.swa_count) == 2
  want = jax.tree.map(lambda a, b: (a + b) / 2, after[1], after[3])  # after steps 2 and 4
  for a, b in zip(jax.tree.leaves(st.swa_params), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_average_is_checkpointed_and_evaluated(run, tmp_path):
  s, st, _ = run
  st = st.replace(swa_batch_stats=jax.tree.map(lambda a: a + 1.0, st.swa_batch_stats))
  checkpoints.save(str(tmp_path), 'final', st, 1)
  got, _ = experiment.restore(s, str(tmp_path), 'final')
  for name in ('swa_params', 'swa_batch_stats', 'swa_count', 'params'):
    for a, b in zip(jax.tree.leaves(getattr(got, name)), jax.tree.leaves(getattr(st, name))):
      np.testing.assert_array_equal(a, b)
  v = experiment.variables_of(got)  # what --mode=eval and the epoch tests evaluate
  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(
      {'params': st.swa_params, 'batch_stats': st.swa_batch_stats})):
    np.testing.assert_array_equal(a, b)
  fresh = experiment.initial_state(s)  # no snapshot yet: the trained weights
  assert experiment.variables_of(fresh)['params'] is fresh.params

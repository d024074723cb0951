"""The attacks' shared parts: ops, keys, starts, projections, the restart loop."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attack_support import OPS
from sglr_jax.attacks import apgd, common


def test_attack_ops_are_hashable_and_default_to_fori_loop_and_identity():
  assert hash(common.DEFAULT_OPS) == hash(common.AttackOps())
  assert common.DEFAULT_OPS == common.AttackOps()
  assert common.DEFAULT_OPS.grad_transform(len) is len
  body = lambda i, c: c * 2 + i
  got = common.DEFAULT_OPS.loop(body, jnp.int32(1), 4)
  assert int(got) == 27  # 1 -> 2 -> 5 -> 12 -> 27
  assert hash(OPS) == hash(OPS._replace())  # the backend's ops: a static jit argument


def test_example_keys_from_a_batch_size_or_ids():
  key = jax.random.key(7)
  by_size = common.example_keys(key, 5)
  by_ids = common.example_keys(key, np.arange(5, dtype=np.int32))
  np.testing.assert_array_equal(jax.random.key_data(by_size), jax.random.key_data(by_ids))
  np.testing.assert_array_equal(jax.random.key_data(by_size[3]),
                                jax.random.key_data(jax.random.fold_in(key, 3)))
  runs = common.run_keys(key, 5, np.array([4, 3, 2, 1, 0], np.int32), 2)
  np.testing.assert_array_equal(
      jax.random.key_data(runs[0]),
      jax.random.key_data(jax.random.fold_in(jax.random.fold_in(key, 4), 2)))


def test_is_per_example_for_typed_and_raw_keys():
  assert not common.is_per_example(jax.random.key(0))
  assert not common.is_per_example(jax.random.PRNGKey(0))
  assert common.is_per_example(common.example_keys(jax.random.key(0), 3))
  assert common.is_per_example(common.example_keys(jax.random.PRNGKey(0), 3))


def test_uniform_start_is_x_plus_uniform_noise_clipped():
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 3, 3, 2)), jnp.float32)
  key = jax.random.PRNGKey(1)
  want = jnp.clip(x + jax.random.uniform(key, x.shape, minval=-0.1, maxval=0.1), 0, 1)
  np.testing.assert_array_equal(common.random_start(key, x, 0.1), want)
  with pytest.raises(ValueError, match='Linf only'):
    common.random_start(key, x, 0.1, 'L2')


@pytest.mark.parametrize('typed', [True, False])
@pytest.mark.parametrize('on_sphere', [False, True])
def test_per_example_starts_do_not_depend_on_the_batch(typed, on_sphere):
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(6, 3, 3, 2)), jnp.float32)
  keys = common.example_keys(jax.random.key(2) if typed else jax.random.PRNGKey(2), 6)
  start = lambda k, z: common.random_start(k, z, 0.05, on_sphere=on_sphere)
  whole = start(keys, x)
  np.testing.assert_array_equal(whole[:2], start(keys[:2], x[:2]))
  np.testing.assert_array_equal(whole[5:], start(keys[5:], x[5:]))
  assert not np.array_equal(whole[0], whole[1])


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_sphere_start_lies_on_the_eps_sphere(norm):
  x = jnp.full((8, 4, 4, 3), 0.5, jnp.float32)       # far from the box: nothing clipped
  keys = common.example_keys(jax.random.key(3), 8)
  d = common.random_start(keys, x, 0.1, norm, on_sphere=True) - x
  n = common.linf_norm(d) if norm == 'Linf' else common.l2_norm(d)
  np.testing.assert_allclose(n, 0.1, rtol=1e-5)
  if norm == 'Linf':  # a uniform direction: few coordinates at the full radius
    assert float(jnp.mean(jnp.abs(d) > 0.099)) < 0.2


def test_project_into_ball_and_box():
  x = jnp.asarray([[[[0.5, 0.02]]]], jnp.float32)   # [1, 1, 1, 2]
  far = x + jnp.asarray([[[[0.3, -0.3]]]])
  np.testing.assert_allclose(common.project(far, x, 0.1), [[[[0.6, 0.0]]]], atol=1e-7)
  d = common.project(far, x, 0.1, 'L2') - x            # rescaled to norm 0.1, then clipped
  np.testing.assert_allclose(d, [[[[0.1 / np.sqrt(2), -0.02]]]], atol=1e-6)


def test_run_until_fooled_keeps_the_first_success_and_stops():
  x = jnp.zeros((3, 1, 1, 1))
  calls = []

  def run(r, robust):
    calls.append(r)
    cand = jnp.full_like(x, 1.0) + r                   # run r proposes r + 1
    fooled = jnp.asarray([r == 0, r >= 0, False])       # point 0 by run 0, point 1 by any
    return cand, robust & ~fooled

  x_adv, robust = common.run_until_fooled(x, jnp.asarray([True, True, True]), 3, run)
  np.testing.assert_array_equal(x_adv[:, 0, 0, 0], [1.0, 1.0, 0.0])
  np.testing.assert_array_equal(robust, [False, False, True])
  _, robust = common.run_until_fooled(x, jnp.asarray([False, False, False]), 3, run)
  assert not bool(robust.any())


def test_target_labels_rank_from_clean_logits():
  z = jnp.asarray([[0.1, 5.0, 3.0, -1.0, 4.0]])
  assert [int(common.target_labels(z, r)[0]) for r in (1, 2, 3, 4, 5)] == [1, 4, 2, 0, 3]


def test_check_targets():
  common.check_targets(10, 9, dlr=True)
  with pytest.raises(ValueError, match='at most 9'):
    common.check_targets(10, 10)
  with pytest.raises(ValueError, match='>= 4 classes'):
    common.check_targets(3, 2, dlr=True)


def test_backend_ops_keep_the_numbers_of_the_default_ops():
  """The platform's ops only change how convolutions are laid out: APGD on a conv
  model gives the default ops' points up to float rounding."""
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(3, 3, 1, 4)) * 0.5, jnp.float32)
  wd = jnp.asarray(rng.normal(size=(8 * 8 * 4, 10)) * 0.1, jnp.float32)

  def logits_fn(z):
    h = jax.lax.conv_general_dilated(z, w, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jax.nn.relu(h).reshape(z.shape[0], -1) @ wd

  x = jnp.asarray(rng.uniform(size=(8, 8, 8, 1)), jnp.float32)
  y = jnp.argmax(logits_fn(x), -1)
  run = lambda ops: jax.jit(lambda x, y: apgd.apgd_attack(
      logits_fn, x, y, eps=4 / 255, key=jax.random.key(0), n_iter=5, ops=ops))(x, y)
  np.testing.assert_allclose(run(OPS), run(common.DEFAULT_OPS), atol=1e-6, rtol=0)

"""PGD: feasibility, eps = 0, and that it raises the loss of a trained model."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attack_support import OPS
from sglr_jax.attacks import losses, pgd
from sglr_jax.attacks.common import DEFAULT_OPS


def _linear_model(key, d=12, k=3):
  w = jax.random.normal(key, (d, k))
  return lambda x: x.reshape(x.shape[0], -1) @ w


def _data(key, n=16):
  x = jax.random.uniform(key, (n, 2, 2, 3))
  return x, jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, 3)


@pytest.mark.parametrize('eps', [0.0, 0.03, 0.3])
def test_result_in_eps_ball_and_unit_box(eps):
  f = _linear_model(jax.random.PRNGKey(0))
  x, y = _data(jax.random.PRNGKey(1))
  x_adv = pgd.pgd_attack(f, x, y, eps=eps, step_size=eps / 4 + 0.01, steps=5,
                         key=jax.random.PRNGKey(2))
  assert np.all(np.abs(np.asarray(x_adv - x)) <= eps + 1e-6)
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  if eps == 0.0:
    np.testing.assert_array_equal(x_adv, x)


def test_per_example_keys_do_not_depend_on_batch_split():
  f = _linear_model(jax.random.PRNGKey(0))
  x, y = _data(jax.random.PRNGKey(1), n=8)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(3), jnp.arange(8))
  run = lambda xs, ys, ks: pgd.pgd_attack(f, xs, ys, eps=0.1, step_size=0.02, steps=3, key=ks)
  whole = run(x, y, keys)
  halves = jnp.concatenate([run(x[:4], y[:4], keys[:4]), run(x[4:], y[4:], keys[4:])])
  np.testing.assert_allclose(whole, halves, atol=1e-6)


def test_pgd_raises_loss_of_trained_model():
  """Train a linear softmax classifier on separable data, then attack it."""
  key = jax.random.PRNGKey(0)
  n, d, k = 256, 12, 3
  centers = jax.random.uniform(key, (k, d), minval=0.2, maxval=0.8)
  y = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, k)
  x = jnp.clip(centers[y] + 0.05 * jax.random.normal(jax.random.fold_in(key, 2), (n, d)), 0, 1)
  x = x.reshape(n, 2, 2, 3)
  w = jnp.zeros((d, k))
  opt = optax.sgd(0.5)
  s = opt.init(w)
  loss = lambda w: jnp.mean(losses.cross_entropy(x.reshape(n, -1) @ w, y))
  for _ in range(200):
    g = jax.grad(loss)(w)
    u, s = opt.update(g, s)
    w = w + u
  f = lambda z: z.reshape(z.shape[0], -1) @ w
  clean = losses.cross_entropy(f(x), y)
  x_adv = pgd.pgd_attack(f, x, y, eps=0.1, step_size=0.025, steps=10, key=jax.random.PRNGKey(4))
  adv = losses.cross_entropy(f(x_adv), y)
  assert float(jnp.mean(clean)) < 0.5  # it did learn
  assert bool(jnp.all(adv >= clean - 1e-5))
  assert float(jnp.mean(adv)) > float(jnp.mean(clean)) + 0.1


@pytest.mark.parametrize('ops', [DEFAULT_OPS, OPS], ids=['default', 'backend'])
def test_pgd_runs_in_fori_loop_compile_size_independent_of_steps(ops):
  """The step count is a loop bound, not unrolled code: same HLO size for 10 and 40."""
  f = _linear_model(jax.random.PRNGKey(0))
  x, y = _data(jax.random.PRNGKey(1))
  size = lambda s: len(jax.jit(lambda x, y: pgd.pgd_attack(
      f, x, y, eps=0.1, step_size=0.02, steps=s, key=jax.random.PRNGKey(0),
      ops=ops)).lower(x, y).as_text())
  assert abs(size(10) - size(40)) < 50

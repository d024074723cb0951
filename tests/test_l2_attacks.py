"""The L2 threat model: PGD, APGD-CE, APGD-T, FAB-T, Square and the ensemble stay in the
L2 ball and [0, 1], never undercut an affine classifier's exact L2 robust accuracy, and
the ensemble reaches it; FAB's L2 projection against an independent solve."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attack_support import OPS
from sglr_jax.attacks import apgd, fab, pgd, square, square_l2
from sglr_jax.attacks import autoattack as aa
from sglr_jax.attacks.common import run_keys

N, HW, K = 48, 6, 10
EPS = 0.07


def _l2(v):
  return np.sqrt(np.sum(np.square(np.asarray(v, np.float64).reshape(len(v), -1)), 1))


@pytest.fixture(scope='module')
def affine():
  """An affine classifier on 6x6 images in [0.3, 0.7]: with eps 0.07 no coordinate can
  leave [0, 1], so the unconstrained L2 distance to each decision boundary is exact."""
  rng = np.random.default_rng(1)
  wmat = rng.normal(size=(HW * HW, K)).astype(np.float32)
  bias = rng.normal(size=K).astype(np.float32)
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ wmat + bias
  x = rng.uniform(0.3, 0.7, size=(N, HW, HW, 1)).astype(np.float32)
  flat = x.reshape(N, -1)
  logits = flat @ wmat + bias
  y = logits.argmax(1)
  y[::8] = (y[::8] + 3) % K                                      # a few clean errors
  dist = np.full(N, np.inf)
  for j in range(K):
    gap = np.linalg.norm(wmat[:, y] - wmat[:, [j]], axis=0)      # [N]
    d = (logits[np.arange(N), y] - logits[:, j]) / np.where(gap > 0, gap, 1)
    dist = np.where(y == j, dist, np.minimum(dist, d))
  dist = np.where(logits.argmax(1) == y, dist, -np.inf)          # L2 distance to the boundary
  return logits_fn, x, y, dist


def _check(x_adv, x, y, eps, logits_fn, dist):
  """In the ball and the box; a point is fooled only if its true distance is <= eps."""
  x_adv = np.asarray(x_adv)
  assert not np.isnan(x_adv).any() and x_adv.min() >= 0 and x_adv.max() <= 1
  assert _l2(x_adv - x).max() <= eps * (1 + 1e-5)
  fooled = np.asarray(logits_fn(x_adv)).argmax(1) != y
  assert not (fooled & (dist > eps + 1e-4)).any()                # never undercut the truth
  return fooled


ATTACKS = {
    'pgd': lambda f, x, y, k: pgd.pgd_attack(f, x, y, eps=EPS, step_size=EPS / 4, steps=20,
                                             key=k, norm='L2', ops=OPS),
    'apgd-ce': lambda f, x, y, k: apgd.apgd_attack(f, x, y, eps=EPS, key=k, norm='L2',
                                                   n_iter=20, ops=OPS),
    'apgd-t': lambda f, x, y, k: apgd.apgd_targeted_attack(
        f, x, y, eps=EPS, key=k, norm='L2', n_iter=20, n_target_classes=3, ops=OPS),
    'fab-t': lambda f, x, y, k: fab.fab_targeted_attack(
        f, x, y, eps=EPS, key=k, norm='L2', n_iter=20, n_target_classes=3, ops=OPS),
    'square': lambda f, x, y, k: square.square_attack(f, x, y, eps=EPS, key=k, norm='L2',
                                                      n_queries=200, ops=OPS),
}


@pytest.mark.parametrize('name', list(ATTACKS))
def test_l2_attack_in_ball_and_sound(affine, name):
  logits_fn, x, y, dist = affine
  x_adv = ATTACKS[name](logits_fn, jnp.asarray(x), jnp.asarray(y), jax.random.key(0))
  fooled = _check(x_adv, x, y, EPS, logits_fn, dist)
  assert fooled.sum() > 0                                        # it does attack


def test_l2_ensemble_reaches_the_exact_robust_accuracy(affine):
  logits_fn, x, y, dist = affine
  exact = dist > EPS
  assert 0.2 < exact.mean() < 0.8
  cfg = aa.AutoAttackConfig(norm='L2', apgd_n_iter=20, apgd_t_n_iter=20, fab_n_iter=20,
                            square_n_queries=100, square_queries_per_call=50)
  res = aa.run_autoattack(logits_fn, x, y, EPS, key=jax.random.key(0), batch_size=16,
                          config=cfg, progress=False, ops=OPS)
  _check(res['x_adv'], x, y, EPS, logits_fn, dist)
  assert (res['robust'] >= exact).all()                          # sound
  assert res['robust'].mean() <= exact.mean() + 0.01             # and within 1 point
  assert list(res['robust_acc_after']) == list(aa.STANDARD_ATTACKS)


def test_square_l2_runs_on_images_and_keeps_the_norm():
  """Square's L2 windows on 28x28x3 (several window sizes): the perturbation is on the
  eps-sphere before clipping, so away from the box edges its norm is eps."""
  rng = np.random.default_rng(0)
  wmat = rng.normal(size=(28 * 28 * 3, K)).astype(np.float32) * 0.05
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ wmat
  x = rng.uniform(0.4, 0.6, size=(8, 28, 28, 3)).astype(np.float32)
  y = np.asarray(logits_fn(x)).argmax(1)
  keys = run_keys(jax.random.key(1), len(x), None, 0)
  x_best = np.asarray(square.square_single_run(
      logits_fn, jnp.asarray(x), jnp.asarray(y), keys, jnp.ones(len(x), bool), eps=0.1,
      norm='L2', n_queries=60))                                   # every point's best
  np.testing.assert_allclose(_l2(x_best - x), 0.1, rtol=1e-4)
  assert set(np.unique(square.l2_sizes(28, 28, 5000))) <= {3, 5, 7, 9, 11, 13, 15, 17, 19, 21,
                                                           23, 25, 27}


def test_eta_pattern_is_the_references():
  e = square_l2.eta(5)
  assert e.shape == (5, 5) and np.sum(e**2) == pytest.approx(1.0)
  assert (e[:2] > 0).all() and (e[2:] < 0).all()                # +- halves
  np.testing.assert_allclose(e[:, ::-1], e, atol=1e-7)           # symmetric across columns
  assert np.argmax(e[1]) == 2                                    # peaked at the centre


def _bisection_projection(t, w, b):
  """Independent solve: ``d_i = clip(-lam w_i, -t_i, 1 - t_i)``, lam by bisection."""
  out = np.zeros_like(t)
  for r in range(len(t)):
    c = w[r] @ t[r] - b[r]
    s = 1.0 if c >= 0 else -1.0
    d_of = lambda lam: np.clip(-lam * s * w[r], -t[r], 1 - t[r])
    lo, hi = 0.0, 1e6
    for _ in range(200):
      mid = (lo + hi) / 2
      if s * (w[r] @ (t[r] + d_of(mid)) - b[r]) > 0:
        lo = mid
      else:
        hi = mid
    out[r] = d_of(hi)
  return out


def test_projection_l2_matches_an_independent_solve():
  rng = np.random.default_rng(0)
  t = rng.uniform(size=(12, 20))
  w = rng.normal(size=(12, 20))
  w[0, :5] = 0.0
  b = np.sum(w * t, 1) + rng.normal(size=12) * 2.0               # some out of reach
  d = np.asarray(fab.projection_l2(jnp.asarray(t, jnp.float32), jnp.asarray(w, jnp.float32),
                                   jnp.asarray(b, jnp.float32)))
  np.testing.assert_allclose(d, _bisection_projection(t, w, b), atol=2e-4)
  assert (t + d >= -1e-6).all() and (t + d <= 1 + 1e-6).all()


@functools.lru_cache(maxsize=1)
def _trained_mlp():
  """A 2-layer MLP trained for a few hundred SGD steps on two Gaussian blobs per class."""
  rng = np.random.default_rng(0)
  k, d = 4, 16
  centres = rng.uniform(0.3, 0.7, size=(k, d)).astype(np.float32)
  y = np.repeat(np.arange(k), 64)
  x = np.clip(centres[y] + 0.08 * rng.normal(size=(len(y), d)), 0, 1).astype(np.float32)
  params = {'w1': jnp.asarray(rng.normal(size=(d, 32)) * 0.3, jnp.float32),
            'w2': jnp.asarray(rng.normal(size=(32, k)) * 0.3, jnp.float32)}
  apply = lambda p, z: jnp.tanh(z.reshape(z.shape[0], -1) @ p['w1'] * 4) @ p['w2']
  loss = lambda p: -jnp.mean(jax.nn.log_softmax(apply(p, x))[jnp.arange(len(y)), y])
  step = jax.jit(lambda p: jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss)(p)))
  for _ in range(300):
    params = step(params)
  return functools.partial(apply, params), x.reshape(-1, 4, 4, 1), y


def test_apgd_ce_l2_at_least_as_strong_as_pgd_l2():
  logits_fn, x, y = _trained_mlp()
  assert (np.asarray(logits_fn(x)).argmax(1) == y).mean() > 0.9
  eps = 0.15
  xp = pgd.pgd_attack(logits_fn, x, y, eps=eps, step_size=eps / 4, steps=20,
                      key=jax.random.key(0), norm='L2')
  xa = apgd.apgd_attack(logits_fn, x, y, eps=eps, key=jax.random.key(0), norm='L2',
                        n_iter=20)
  acc = lambda z: (np.asarray(logits_fn(z)).argmax(1) == y).mean()
  assert _l2(np.asarray(xa) - x).max() <= eps * (1 + 1e-5)
  assert acc(x) > acc(xp) >= acc(xa)


def test_l2_configs_validate_and_reach_the_params():
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from sglr_jax import config_validation, experiment, errors  # pylint: disable=g-import-not-at-top
  for name, eps in (('mnist_l2_sglr', 2.0), ('cifar10_l2_sglr', 0.5)):
    c = tiny_config(name)
    config_validation.validate(c)                                # an L2 eps may exceed 1
    hp, ev = experiment.objective_params(c), experiment.eval_params(c)
    assert (hp.norm, hp.eps, hp.step_size, hp.steps) == ('L2', eps, eps / 4, 2)
    assert (ev.norm, ev.eps, ev.step_size) == ('L2', eps, eps / 8)
  assert experiment.eval_params(tiny_config()).norm == 'Linf'
  for field, value in (('eval.norm', 'L1'), ('attack.norm', 'l2'), ('attack.eps', -0.5)):
    with pytest.raises(errors.ConfigError, match=field):
      config_validation.validate(tiny_config('mnist_l2_sglr', **{field: value}))
  with pytest.raises(errors.ConfigError, match='attack.eps'):     # Linf radius in [0, 1]
    config_validation.validate(tiny_config('mnist_l2_sglr', **{'attack.norm': 'Linf'}))


def test_training_attacks_follow_the_norm(affine):
  """PGD-AT's and TRADES' inner maximisations with ``norm='L2'`` stay in the L2 ball
  (and, with an eps above the Linf-meaningful range, leave the Linf one)."""
  from sglr_jax.objectives import base, trades  # pylint: disable=g-import-not-at-top
  logits_fn, x, y, _ = affine
  hp = base.ObjectiveParams(name='at', eps=1.0, step_size=0.25, steps=5, norm='L2')
  keys = jax.random.split(jax.random.key(0), N)
  for attack in (base.pgd_ce_attack, trades.attack):
    x_adv = np.asarray(attack(hp, logits_fn, jnp.asarray(x), jnp.asarray(y), keys))
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert _l2(x_adv - x).max() <= 1.0 + 1e-5 and _l2(x_adv - x).max() > 0.5

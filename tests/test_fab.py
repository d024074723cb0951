"""FAB-T: the Linf hyperplane projection against the reference and an LP; minimal
distances on an affine model; feasibility and determinism on a CNN."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from attack_support import OPS, check_linf_attack, small_cnn
from bench.attacks import numpy_init
from conftest import O2
from sglr_jax.attacks import fab


def reference_projection_linf(t, w, b):
  """Line-by-line numpy transcription of the reference's ``projection_linf``
  (``autoattack/fab_projections.py``): sort the rooms, binary search the prefix sums."""
  t, w, b = t.astype(np.float32), w.astype(np.float32).copy(), b.astype(np.float32).copy()
  sign = 2 * ((w * t).sum(1) - b >= 0) - 1
  w *= sign[:, None]
  b *= sign
  a = (w < 0).astype(np.float32)
  d = (a - t) * (w != 0)
  p = a - t * (2 * a - 1)
  indp = np.argsort(p, axis=1, kind='stable')
  b = b - (w * t).sum(1)
  b0 = (w * d).sum(1)
  indp2 = indp[:, ::-1]
  ws = np.take_along_axis(w, indp2, 1)
  bs2 = -ws * np.take_along_axis(d, indp2, 1)
  s = np.cumsum(np.abs(ws), 1)
  sb = np.cumsum(bs2, 1) + b0[:, None]
  b2 = sb[:, -1] - s[:, -1] * np.take_along_axis(p, indp[:, :1], 1)[:, 0]
  c_l = b - b2 > 0
  c2 = (b - b0 > 0) & ~c_l
  lb = np.zeros(c2.sum())
  ub = np.full_like(lb, w.shape[1] - 1)
  indp_, sb_, s_, p_, b_ = indp[c2], sb[c2], s[c2], p[c2], b[c2]
  for _ in range(math.ceil(math.log2(w.shape[1]))):
    counter4 = np.floor((lb + ub) / 2)
    counter2 = counter4.astype(np.int64)[:, None]
    indcurr = np.take_along_axis(indp_, indp_.shape[1] - 1 - counter2, 1)
    b2 = (np.take_along_axis(sb_, counter2, 1)
          - np.take_along_axis(s_, counter2, 1) * np.take_along_axis(p_, indcurr, 1))[:, 0]
    c = b_ - b2 > 0
    lb = np.where(c, counter4, lb)
    ub = np.where(c, ub, counter4)
  lb = lb.astype(np.int64)
  with np.errstate(divide='ignore', invalid='ignore'):
    if c_l.any():
      lmbd = np.maximum((b[c_l] - sb[c_l, -1]) / (-s[c_l, -1]), 0)[:, None]
      d[c_l] = (2 * a[c_l] - 1) * lmbd
    rows = np.flatnonzero(c2)
    lmbd = np.maximum((b[c2] - sb[rows, lb]) / (-s[rows, lb]), 0)[:, None]
  d[c2] = np.minimum(lmbd, d[c2]) * a[c2] + np.maximum(-lmbd, d[c2]) * (1 - a[c2])
  return d * (w != 0)


def _instances(n, dim, seed):
  rng = np.random.default_rng(seed)
  t = rng.uniform(size=(n, dim)).astype(np.float32)
  t[rng.uniform(size=t.shape) < 0.2] = 0.0      # pixels on the box faces
  t[rng.uniform(size=t.shape) < 0.1] = 1.0
  w = rng.normal(size=(n, dim)).astype(np.float32)
  w[rng.uniform(size=w.shape) < 0.2] = 0.0      # dead gradients
  reach = np.abs(w).sum(1)
  # offsets from tiny (lambda below every room) to beyond reach (out of the box)
  frac = np.concatenate([np.geomspace(1e-4, 0.9, n - n // 4), rng.uniform(1.05, 2, n // 4)])
  side = rng.choice([-1.0, 1.0], size=n)
  b = (w * t).sum(1) - side * frac * reach * 0.5
  return t, w, b.astype(np.float32)


@pytest.mark.parametrize('dim', [7, 784])
def test_projection_matches_reference(dim):
  t, w, b = _instances(96, dim, seed=dim)
  want = reference_projection_linf(t, w, b)
  got = np.asarray(jax.jit(fab.projection_linf)(t, w, b))
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
  assert (np.abs(want).max(1) > 0).all()


def test_projection_is_the_smallest_linf_step_lp():
  t, w, b = _instances(24, 6, seed=1)
  d = np.asarray(jax.jit(fab.projection_linf)(t, w, b))
  for i in range(len(t)):
    # min r  s.t. -r <= d_j <= r, -t_j <= d_j <= 1 - t_j, w . d = b - w . t
    n = t.shape[1]
    c = np.zeros(n + 1)
    c[-1] = 1.0
    a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
    bounds = [(-tj, 1 - tj) for tj in t[i]] + [(0, None)]
    res = optimize.linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * n),
                           A_eq=np.append(w[i], 0.0)[None], b_eq=[b[i] - w[i] @ t[i]],
                           bounds=bounds, method='highs')
    if res.status == 2:  # out of the box: the full move towards the plane
      side = 1.0 if w[i] @ t[i] - b[i] >= 0 else -1.0
      room = np.where(side * w[i] < 0, 1 - t[i], t[i]) * (w[i] != 0)
      assert abs(w[i] @ (t[i] + d[i]) - b[i]) > 1e-4
      np.testing.assert_allclose(np.abs(d[i]), room, atol=1e-6)
      continue
    assert res.status == 0
    np.testing.assert_allclose(np.abs(d[i]).max(), res.fun, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(w[i] @ (t[i] + d[i]), b[i], atol=1e-4)
    assert (t[i] + d[i] >= -1e-7).all() and (t[i] + d[i] <= 1 + 1e-7).all()


def test_fab_finds_the_minimal_distance_on_an_affine_model():
  """For ``z = W x + c`` the smallest Linf step to class t is the projection onto
  ``(W_t - W_y) . x' + c_t - c_y = 0`` within the box; FAB gets there from above
  (first step overshoots by eta = 1.05, later steps back off)."""
  rng = np.random.default_rng(0)
  n, hw, k = 32, 4, 10
  wmat = rng.normal(size=(hw * hw, k)).astype(np.float32)
  bias = rng.normal(size=k).astype(np.float32)
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ wmat + bias
  x = rng.uniform(size=(n, hw, hw, 1)).astype(np.float32)
  z = logits_fn(x)
  y = z.argmax(1)
  target = np.argsort(z, 1)[:, -2]
  adv, found = jax.jit(lambda x, y, t: fab.fab_targeted_single_run(
      logits_fn, x, y, t, None, eps=0.1, n_iter=30, ops=OPS),
      compiler_options=O2)(x, y, target)
  adv, found = np.asarray(adv), np.asarray(found)
  flat = x.reshape(n, -1)

  def min_dist(cls):  # smallest Linf step onto the boundary between y and cls
    w = (wmat[:, cls] - wmat[:, y]).T                           # [n, D]
    off = bias[y] - bias[cls]
    d = reference_projection_linf(flat, w, off)
    reached = np.abs((w * (flat + d)).sum(1) - off) < 1e-4
    return np.where(reached, np.abs(d).max(1), np.inf)

  exact = min_dist(target)
  others = [np.where(y == j, np.inf, min_dist(np.full(n, j))) for j in range(k)]
  lower = np.min(others, axis=0)                                # any misclassification
  reachable = np.isfinite(exact)
  assert found[reachable].all() and reachable.mean() > 0.5
  dist = np.abs(adv - x).reshape(n, -1).max(1)
  assert (dist[found] >= lower[found] * (1 - 1e-4)).all()
  assert (dist[reachable] <= exact[reachable] * 1.05 + 1e-5).all()
  assert (dist[reachable] < exact[reachable] * 1.01).mean() > 0.8  # converged from above
  assert (np.asarray(logits_fn(adv)).argmax(1)[found] != y[found]).all()


def test_fab_targeted_on_cnn_feasible_unchanged_and_deterministic():
  model = small_cnn(width=8)
  variables = numpy_init(model, (1, 28, 28, 1))
  logits_fn = lambda z: model.apply(variables, z, train=False)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(32, 28, 28, 1)), jnp.float32)
  y = jnp.argmax(jax.jit(logits_fn)(x), -1)
  eps = 2 / 255
  run = jax.jit(lambda x, y, key: fab.fab_targeted_attack(
      logits_fn, x, y, eps=eps, key=key, n_iter=10, n_target_classes=3, ops=OPS),
                compiler_options=O2)
  a = np.asarray(run(x, y, jax.random.key(0)))
  b = np.asarray(run(x, y, jax.random.key(0)))
  np.testing.assert_array_equal(a, b)
  x = np.asarray(x)
  fooled = check_linf_attack(a, x, y, eps, logits_fn)
  # early stop on the points it fools: same verdicts, but not the smallest perturbations
  early = jax.jit(lambda x, y, key, mask: fab.fab_targeted_attack(
      logits_fn, x, y, eps=eps, key=key, n_iter=10, n_target_classes=3, mask=mask,
      early_stop=True, ops=OPS), compiler_options=O2)(x, y, jax.random.key(0), fooled)
  early = np.asarray(early)
  assert np.abs(early - x).max() <= eps + 1e-6
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits_fn(early), -1) != y), fooled)
  dist = lambda v: np.abs(v - x).reshape(len(x), -1).max(1)[fooled]
  assert (dist(early) >= dist(a) - 1e-7).all() and (dist(early) > dist(a)).any()

"""FAB-T (Croce and Hein, 2020): targeted Fast Adaptive Boundary attack, Linf and L2.

A JAX port of the reference's ``FABAttack_PT`` in its targeted form: each step
linearises ``z_t - z_y`` at the current point, projects both the current point and the
original onto that hyperplane (within the [0, 1] box), moves to a convex combination of
the two (``alpha <= alpha_max``) with overshoot ``eta``, and after every success backs
off towards the original by ``beta``. FAB minimises the perturbation; the result counts
only if it is within ``eps``. L2 differs only in the norm: the projections
(``projection_l2``), the step ratio, the distances and the restarts' random start.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sglr_jax.attacks.common import (DEFAULT_OPS, AttackOps, LogitsFn, check_targets,
                                     direction_noise, initial, l2_norm, linf_norm,
                                     per_example, predict, run_keys,
                                     run_until_fooled, target_labels)

NORMS = ('Linf', 'L2')


def _norm_fn(norm: str):
  return linf_norm if norm == 'Linf' else l2_norm


def projection_l2(t, w, b, max_steps: int = 64):
  """Smallest-L2 ``d`` with ``w . (t + d) = b`` and ``t + d`` in [0, 1], row by row.

  The reference's ``projection_l2``: ``d_i = -lambda w_i`` clipped to the box, the
  closest corner where the hyperplane is out of reach. Solved by the Newton climb of
  ``projection_linf`` with the movement ``min(lambda |w_i|, room_i)``.
  """
  return _box_projection(t, w, b, 'L2', max_steps)


def projection_linf(t, w, b, max_steps: int = 64):
  """Smallest-Linf ``d`` with ``w . (t + d) = b`` and ``t + d`` in [0, 1], row by row.

  ``t, w [N, D]``, ``b [N]``. Every coordinate moves towards the hyperplane by
  ``min(lambda, room_i)``; where the hyperplane is out of reach inside the box, by its
  full room (the closest corner). ``lambda`` solves ``g(lambda) = sum_i |w_i|
  min(lambda, room_i) = need``; ``g`` is increasing, concave and piecewise linear, so
  Newton's method from 0 climbs monotonically below the root and lands on it exactly
  once it reaches the root's piece: each step is the closed form on the piece it
  stands on. It stops when a step no longer moves (a handful of steps on images,
  whose rooms take few distinct values); ``max_steps`` only bounds pathological rows.
  The reference finds the piece by sorting the rooms and a binary search; same answer
  (tests/test_fab.py compares with a transcription of it), but XLA:CPU's sort costs
  more than the rest of a FAB step, and a bisection needs ~40 passes over the rows.
  """
  return _box_projection(t, w, b, 'Linf', max_steps)


def _box_projection(t, w, b, norm: str, max_steps: int):
  """Coordinate ``i`` moves ``s_i min(lambda, room_i / s_i)`` towards the hyperplane, with
  ``s_i = 1`` (Linf) or ``|w_i|`` (L2); ``lambda`` by Newton's method (projection_linf)."""
  side = jnp.where(jnp.sum(w * t, 1) - b >= 0, 1.0, -1.0)        # [N]
  w = w * side[:, None]
  need = jnp.sum(w * t, 1) - b * side                           # decrease of w.z needed, >= 0
  toward_one = w < 0                                            # move up where w < 0
  direction = jnp.where(toward_one, 1.0, -1.0)
  room = jnp.where(toward_one, 1.0 - t, t)                      # |d_i| available
  aw = jnp.abs(w)
  reach = jnp.sum(aw * room, 1)                                 # largest decrease possible
  feasible = need < reach
  if norm == 'Linf':
    scale, ratio = 1.0, room
  else:
    scale = aw
    ratio = jnp.where(aw > 0, room / jnp.where(aw > 0, aw, 1.0), jnp.inf)

  def newton(lam):
    """The closed form on the piece right of ``lam``: coordinates with ratio <= lam
    move fully, the others by the new lambda."""
    capped = ratio > lam[:, None]
    free = jnp.sum(jnp.where(capped, 0.0, aw * room), 1)
    slope = jnp.sum(jnp.where(capped, aw * scale, 0.0), 1)
    new = (need - free) / slope
    return jnp.where(feasible & (slope > 0) & jnp.isfinite(new), jnp.maximum(new, lam), lam)

  def cond(s):
    i, lam, prev = s
    return (i < max_steps) & jnp.any(lam > prev)

  def body(s):
    i, lam, _ = s
    return i + 1, newton(lam), lam

  zero = jnp.zeros_like(need)
  _, lam, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), newton(zero), zero))
  step = jnp.where(feasible[:, None], scale * jnp.minimum(lam[:, None], ratio), room)
  return jnp.where(w != 0, direction * step, 0.0)


def fab_targeted_single_run(logits_fn: LogitsFn, x, y, target, keys, *, eps,
                            n_iter: int = 100, alpha_max: float = 0.1, eta: float = 1.05,
                            beta: float = 0.9, rand_start=False, active=None,
                            early_stop: bool = False, norm: str = 'Linf',
                            ops: AttackOps = DEFAULT_OPS):
  """One targeted FAB run. Returns ``(x_adv, found)``: the smallest (in ``norm``)
  misclassified iterate found (``x`` where none was) and whether one was found.

  ``rand_start`` (may be traced) starts from a random point at distance ``eps / 2``,
  as the reference does on restarts after the first. ``early_stop`` (not in the
  reference) ends the run once every point of ``active`` has one within ``eps``: the
  same verdicts, but not the smallest perturbations. ``ops.grad_transform`` wraps the
  function that differentiates the model.
  """
  if norm not in NORMS:
    raise ValueError(f'norm={norm!r}; allowed: {NORMS}')
  b = x.shape[0]
  flat = lambda v: v.reshape(b, -1)
  rows = jnp.arange(b)
  dist_fn = _norm_fn(norm)
  projection = projection_linf if norm == 'Linf' else projection_l2

  @ops.grad_transform
  def diff_and_grad(x1):
    def f(z):
      logits = logits_fn(z)
      diff = logits[rows, target] - logits[rows, y]   # -(z_y - z_t)
      return jnp.sum(diff), diff
    (_, df), dg = jax.value_and_grad(f, has_aux=True)(x1)
    return df, dg

  if rand_start is False:
    x1 = x
  else:
    u = direction_noise(keys, x, norm)
    x_rand = jnp.clip(x + eps * u / per_example(dist_fn(u), x) * 0.5, 0.0, 1.0)
    x1 = jnp.where(rand_start, x_rand, x)
  x0 = flat(x)

  def body(_, s):
    x1, adv, best = s
    df, dg = diff_and_grad(x1)
    w = flat(dg)
    off = jnp.sum(w * flat(x1), 1) - df                       # hyperplane w.z = off
    d3 = projection(jnp.concatenate([flat(x1), x0]), jnp.concatenate([w, w]),
                         jnp.concatenate([off, off]))
    d1, d2 = d3[:b].reshape(x.shape), d3[b:].reshape(x.shape)
    a0 = jnp.maximum(dist_fn(d3), 1e-8)
    a1, a2 = a0[:b], a0[b:]
    alpha = per_example(jnp.clip(a1 / (a1 + a2), 0.0, alpha_max), x)
    x1 = jnp.clip((x1 + eta * d1) * (1 - alpha) + (x + d2 * eta) * alpha, 0.0, 1.0)
    is_adv = predict(logits_fn, x1) != y
    dist = dist_fn(x1 - x)
    better = is_adv & (dist < best)
    adv = jnp.where(per_example(better, x), x1, adv)
    best = jnp.where(better, dist, best)
    x1 = jnp.where(per_example(is_adv, x), x + (x1 - x) * beta, x1)
    return x1, adv, best

  def cond(s):
    if not early_stop:
      return s[0] < n_iter
    open_ = s[3] > eps if active is None else active & (s[3] > eps)
    return (s[0] < n_iter) & jnp.any(open_)

  init = (jnp.int32(0), x1, x, jnp.full((b,), 1e10, jnp.float32))
  _, _, adv, best = jax.lax.while_loop(cond, lambda s: (s[0] + 1,) + body(s[0], s[1:]),
                                       init)
  return adv, best < 1e10


def fab_targeted_run(logits_fn: LogitsFn, x, y, run, *, eps, key, n_iter: int = 100,
                     n_restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
                     beta: float = 0.9, active=None, example_ids=None,
                     early_stop: bool = False, clean_logits=None, norm: str = 'Linf',
                     ops: AttackOps = DEFAULT_OPS):
  """Run number ``run`` (may be traced) of FAB-T: ``(x_candidate, robust)``.

  Runs are numbered restart-fastest: run ``r`` targets the class ranked
  ``2 + r // n_restarts`` by the clean logits, from a random start unless it is a
  target's first restart. A point is fooled when FAB found a misclassified point
  within ``eps`` (``x_candidate``; ``x`` elsewhere).
  """
  if clean_logits is None:
    clean_logits = logits_fn(x)
  target = target_labels(clean_logits, 2 + run // n_restarts)
  keys = run_keys(key, x.shape[0], example_ids, run)
  adv, found = fab_targeted_single_run(
      logits_fn, x, y, target, keys, eps=eps, n_iter=n_iter, alpha_max=alpha_max,
      eta=eta, beta=beta, active=active, early_stop=early_stop, norm=norm, ops=ops,
      rand_start=(run % n_restarts) > 0 if n_restarts > 1 else False)
  adv = jnp.where(per_example(found, x), adv, x)
  robust = (predict(logits_fn, adv) == y) | (_norm_fn(norm)(x - adv) > eps)
  return adv, robust


def fab_targeted_attack(logits_fn: LogitsFn, x, y, *, eps, key, n_iter: int = 100,
                        n_restarts: int = 1, n_target_classes: int = 9,
                        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                        mask=None, example_ids=None, early_stop: bool = False,
                        norm: str = 'Linf', ops: AttackOps = DEFAULT_OPS):
  """FAB-T, Linf or L2: the reference's ``FABAttack.perturb`` with ``targeted=True``.

  For each target rank 2..n_target_classes+1 and restart, attacks the points still
  robust; a result counts when it is misclassified and within ``eps``. Returns ``x_adv``
  (``x`` where no attack succeeded).
  """
  clean_logits, robust0 = initial(logits_fn, x, y, mask)
  check_targets(clean_logits.shape[-1], n_target_classes)

  def run(r, active):
    return fab_targeted_run(logits_fn, x, y, r, eps=eps, key=key, n_iter=n_iter,
                            n_restarts=n_restarts, alpha_max=alpha_max, eta=eta, beta=beta,
                            active=active, example_ids=example_ids, early_stop=early_stop,
                            clean_logits=clean_logits, norm=norm, ops=ops)

  x_adv, _ = run_until_fooled(x, robust0, n_target_classes * n_restarts, run)
  return x_adv

"""Square Attack (Andriushchenko et al., 2020), Linf and L2, score-based: as AutoAttack
runs it.

A JAX port of the reference's ``SquareAttack`` (margin loss). Linf: start from vertical
stripes of +-eps, then per query paint one random square (side from the ``p`` schedule)
with a random +-2 eps per channel and project. L2: the reference's windows
(``square_l2``). A proposal is kept if the margin dropped or the point became
misclassified; queries stop once every point is misclassified.

Deviation: the reference draws one square position and one sign vector per iteration
for the whole batch; here each example draws its own (from ``fold_in(key, id)``), which
leaves every point's distribution of proposals unchanged.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sglr_jax.attacks import losses, square_l2
from sglr_jax.attacks.common import (DEFAULT_OPS, AttackOps, LogitsFn, fold_keys, initial,
                                     per_example, predict, project, run_keys,
                                     run_until_fooled)


def p_selection(it: int, n_queries: int = 5000, p_init: float = 0.8,
                rescale_schedule: bool = False) -> float:
  """Fraction of pixels the square covers at query ``it`` (the reference's schedule).

  AutoAttack runs with ``rescale_schedule=False``: halvings after 10, 50, 200, 500,
  1000, 2000, 4000, 6000 and 8000 queries.
  """
  if rescale_schedule:
    it = int(it / n_queries * 10000)
  bounds = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
  halvings = sum(it > b for b in bounds)
  return p_init / 2**halvings if halvings else p_init


def square_sizes(height: int, width: int, n_queries: int = 5000, p_init: float = 0.8,
                 rescale_schedule: bool = False) -> np.ndarray:
  """Side of the square at every query ``[n_queries]``: ``round(sqrt(p h w))``, in [1, min(h, w)].

  Python's ``round`` (half to even), as in the reference.
  """
  sizes = []
  for it in range(n_queries):
    p = p_selection(it, n_queries, p_init, rescale_schedule)
    s = max(int(round(math.sqrt(p * height * width))), 1)
    sizes.append(min(s, min(height, width)))
  return np.asarray(sizes, np.int32)


def l2_sizes(height: int, width: int, n_queries: int = 5000, p_init: float = 0.8,
             rescale_schedule: bool = False) -> np.ndarray:
  """L2 window side per query ``[n_queries]`` (``square_l2.window_sizes``)."""
  ps = [p_selection(it, n_queries, p_init, rescale_schedule) for it in range(n_queries)]
  return square_l2.window_sizes(height, width, ps)


def _margin(logits_fn, x, y):
  """True logit minus the largest other (> 0: still correct): the reference's margin loss."""
  return -losses.margin(logits_fn(x), y)


class SquareState(NamedTuple):
  """Per-example state carried across queries."""
  x_best: jax.Array       # [B, H, W, C]
  margin_min: jax.Array   # [B] > 0 while still correctly classified
  loss_min: jax.Array     # [B] (the margin loss)


def square_init(logits_fn: LogitsFn, x, y, keys, *, eps, n_queries: int = 5000,
                norm: str = 'Linf'):
  """The start: vertical stripes of +-eps (per example, column and channel); L2: the
  reference's ``eta`` tiles scaled to norm ``eps``."""
  _, _, w, c = x.shape
  k_init = fold_keys(keys, n_queries)  # queries use 0 .. n_queries - 1
  if norm == 'L2':
    x_best = square_l2.l2_start(x, k_init, eps)
  else:
    stripes = jax.vmap(lambda k: jax.random.rademacher(k, (1, w, c), jnp.float32))(k_init)
    x_best = jnp.clip(x + eps * stripes, 0.0, 1.0)
  margin = _margin(logits_fn, x_best, y)
  return SquareState(x_best, margin, margin)


def square_queries(logits_fn: LogitsFn, x, y, state: SquareState, keys, active, *, eps,
                   start=0, stop=None, n_queries: int = 5000, p_init: float = 0.8,
                   rescale_schedule: bool = False, norm: str = 'Linf') -> SquareState:
  """Queries ``start`` (may be traced) up to ``stop`` (default ``n_queries``) on the points
  of ``active`` still correctly classified; ends early once none is."""
  _, h, w, _ = x.shape
  sizes = jnp.asarray(square_sizes(h, w, n_queries, p_init, rescale_schedule))
  sizes_l2 = l2_sizes(h, w, n_queries, p_init, rescale_schedule) if norm == 'L2' else None
  stop = n_queries if stop is None else jnp.minimum(stop, n_queries)

  def cond(s):
    it, st = s
    return (it < stop) & jnp.any(active & (st.margin_min > 0))

  def body(s):
    it, (x_best, margin_min, loss_min) = s
    todo = active & (margin_min > 0)
    if norm == 'L2':
      x_new = square_l2.l2_proposal(x, x_best, it, fold_keys(keys, it), eps, sizes_l2)
    else:
      x_new = _linf_proposal(x, x_best, it, keys, eps, sizes[it])
    margin = _margin(logits_fn, x_new, y)
    loss = margin
    improved = loss < loss_min
    loss_min = jnp.where(todo & improved, loss, loss_min)
    improved = (improved | (margin <= 0)) & todo
    margin_min = jnp.where(improved, margin, margin_min)
    x_best = jnp.where(per_example(improved, x), x_new, x_best)
    return it + 1, SquareState(x_best, margin_min, loss_min)

  _, state = jax.lax.while_loop(cond, body, (jnp.asarray(start, jnp.int32), state))
  return state


def _linf_proposal(x, x_best, it, keys, eps, size):
  """One Linf query's candidates: a square of +-2 eps per channel, projected."""
  _, h, w, c = x.shape
  rows = jnp.arange(h)[None, :, None, None]
  cols = jnp.arange(w)[None, None, :, None]
  k3 = jax.vmap(lambda k: jax.random.split(k, 3))(fold_keys(keys, it))
  # the reference's random_int(0, h - s): floor(U * (h - s)), never h - s itself
  vh = jnp.floor((h - size) * jax.vmap(jax.random.uniform)(k3[:, 0])).astype(jnp.int32)
  vw = jnp.floor((w - size) * jax.vmap(jax.random.uniform)(k3[:, 1])).astype(jnp.int32)
  sign = jax.vmap(lambda k: jax.random.rademacher(k, (1, 1, c), jnp.float32))(k3[:, 2])
  vh, vw = per_example(vh, x), per_example(vw, x)
  window = (rows >= vh) & (rows < vh + size) & (cols >= vw) & (cols < vw + size)
  return project(x_best + window.astype(x.dtype) * (2.0 * eps) * sign, x, eps)


def square_single_run(logits_fn: LogitsFn, x, y, keys, active, *, eps,
                      n_queries: int = 5000, p_init: float = 0.8,
                      rescale_schedule: bool = False, norm: str = 'Linf'):
  """One Square run on the points in ``active``; returns the best point per example."""
  state = square_init(logits_fn, x, y, keys, eps=eps, n_queries=n_queries, norm=norm)
  state = square_queries(logits_fn, x, y, state, keys, active, eps=eps,
                         n_queries=n_queries, p_init=p_init,
                         rescale_schedule=rescale_schedule, norm=norm)
  return state.x_best


def square_attack(logits_fn: LogitsFn, x, y, *, eps, key, n_queries: int = 5000,
                  p_init: float = 0.8, n_restarts: int = 1, rescale_schedule: bool = False,
                  mask=None, example_ids=None, norm: str = 'Linf',
                  ops: AttackOps = DEFAULT_OPS):
  """Square Attack, Linf or L2, margin loss: the reference's ``SquareAttack.perturb``.

  AutoAttack's setting is the default (``p_init=0.8``, 5,000 queries, no rescaling).
  Returns ``x_adv`` (``x`` where no query succeeded). ``ops`` is taken for the attacks'
  common signature only: Square differentiates nothing, and its query loop ends early.
  """
  del ops
  _, robust0 = initial(logits_fn, x, y, mask)

  def run(r, robust):
    # only the points still robust are attacked, as in the reference
    x_best = square_single_run(
        logits_fn, x, y, run_keys(key, x.shape[0], example_ids, r), robust, eps=eps,
        n_queries=n_queries, p_init=p_init, rescale_schedule=rescale_schedule, norm=norm)
    return x_best, predict(logits_fn, x_best) == y

  x_adv, _ = run_until_fooled(x, robust0, n_restarts, run)
  return x_adv

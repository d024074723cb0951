"""Projected gradient descent (Madry et al.), Linf or L2, composed from small pure parts.

Linf steps by ``step_size * sign(grad)``; L2 by ``step_size * grad / ||grad||`` (the
normalised-gradient step of the L2 PGD-AT literature), each followed by the projection
onto the eps-ball and [0, 1].

The steps run in ``ops.loop`` (a ``lax.fori_loop`` by default; on CPU the experiment
passes a loop that keeps the input-gradient convolutions on XLA:CPU's fast path), so
compile time does not grow with the number of steps. ``logits_fn`` must already run
the model in inference mode.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sglr_jax.attacks import losses
from sglr_jax.attacks.common import (DEFAULT_OPS, AttackOps, LogitsFn, normalize, project,
                                     random_start, sample_like)

NORMS = ('Linf', 'L2')

__all__ = ['input_gradient', 'pgd_attack', 'sample_like', 'sign_step']


def input_gradient(logits_fn: LogitsFn, loss_fn, x_adv, y):
  """Gradient of the summed per-example loss: the per-example input gradients."""
  return jax.grad(lambda z: jnp.sum(loss_fn(logits_fn(z), y)))(x_adv)


def sign_step(logits_fn: LogitsFn, loss_fn, x_adv, x, y, eps, step_size,
              norm: str = 'Linf'):
  """One ascent step ``x' <- proj(x' + a * sign(grad))`` (L2: ``a * grad / ||grad||``)."""
  g = input_gradient(logits_fn, loss_fn, x_adv, y)
  direction = jnp.sign(g) if norm == 'Linf' else normalize(g, 'L2')
  return project(x_adv + step_size * direction, x, eps, norm)


def pgd_attack(logits_fn: LogitsFn, x, y, *, eps, step_size, steps: int, key,
               loss_fn=losses.cross_entropy, random_init: bool = True,
               x_init=None, norm: str = 'Linf', ops: AttackOps = DEFAULT_OPS):
  """Returns ``x'`` with ``||x' - x||_p <= eps`` (p: ``norm``) and ``x'`` in [0, 1].

  Args:
    logits_fn: pure ``x [B, H, W, C] -> logits [B, K]`` (inference mode).
    x: clean images in [0, 1].
    y: whatever ``loss_fn`` takes as its second argument (integer labels for CE,
      clean logits for TRADES' KL).
    key: one PRNG key, or one per example (``[B]`` typed, ``[B, 2]`` raw).
    loss_fn: per-example loss ``(logits, y) -> [B]`` to maximise.
    random_init: start from ``x + U(-eps, eps)`` (L2: ``x + eps g / ||g||``, ``g``
      Gaussian, as the ``robustness`` library's L2 PGD); otherwise from ``x``.
    x_init: an explicit start (TRADES: ``x + 0.001 N(0, 1)``); overrides random_init.
    norm: 'Linf' or 'L2'.
    ops: how the steps loop (``AttackOps.loop``).
  """
  if norm not in NORMS:
    raise ValueError(f'norm={norm!r}; allowed: {NORMS}')
  x = jax.lax.stop_gradient(x)
  if x_init is not None:
    x_adv = project(x_init, x, eps, norm)
  elif random_init:
    x_adv = random_start(key, x, eps, norm, on_sphere=norm == 'L2')
  else:
    x_adv = x

  def body(_, x_adv):
    return sign_step(logits_fn, loss_fn, x_adv, x, y, eps, step_size, norm)

  x_adv = ops.loop(body, x_adv, steps)
  return jax.lax.stop_gradient(x_adv)

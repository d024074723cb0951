"""Linf projected gradient descent (Madry et al.), composed from small pure parts.

The loop is ``loop.attack_loop`` (a ``lax.fori_loop`` whose body's convolutions are
put in XLA:CPU's canonical layout, see ``loop.py``) so compile time does not grow with
the number of steps. ``logits_fn`` must already run the model in inference mode.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sglr_jax.attacks import losses
from sglr_jax.attacks.loop import attack_loop

LogitsFn = Callable[[jax.Array], jax.Array]


def project_linf(x_adv, x, eps):
  """Nearest point of the eps-ball around ``x`` intersected with [0, 1]."""
  return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)


def sample_like(sampler, key, x, **kwargs):
  """Noise shaped like ``x`` from one key, or from one key per example.

  Per-example keys (``[B, 2]``, derived from the examples' dataset indices) make the
  noise independent of how the batch is split over devices.
  """
  if key.ndim == 2:
    return jax.vmap(lambda k, xi: sampler(k, xi.shape, xi.dtype, **kwargs))(key, x)
  return sampler(key, x.shape, x.dtype, **kwargs)


def random_start(key, x, eps):
  """``x + U(-eps, eps)`` clipped to [0, 1]."""
  noise = sample_like(jax.random.uniform, key, x, minval=-eps, maxval=eps)
  return jnp.clip(x + noise, 0.0, 1.0)


def input_gradient(logits_fn: LogitsFn, loss_fn, x_adv, y):
  """Gradient of the summed per-example loss: the per-example input gradients."""
  return jax.grad(lambda z: jnp.sum(loss_fn(logits_fn(z), y)))(x_adv)


def sign_step(logits_fn: LogitsFn, loss_fn, x_adv, x, y, eps, step_size):
  """One ascent step ``x' <- proj(x' + a * sign(grad))``."""
  g = input_gradient(logits_fn, loss_fn, x_adv, y)
  return project_linf(x_adv + step_size * jnp.sign(g), x, eps)


def pgd_attack(logits_fn: LogitsFn, x, y, *, eps, step_size, steps: int, key,
               loss_fn=losses.cross_entropy, random_init: bool = True,
               x_init=None):
  """Returns ``x'`` with ``||x' - x||_inf <= eps`` and ``x'`` in [0, 1].

  Args:
    logits_fn: pure ``x [B, H, W, C] -> logits [B, K]`` (inference mode).
    x: clean images in [0, 1].
    y: whatever ``loss_fn`` takes as its second argument (integer labels for CE,
      clean logits for TRADES' KL).
    key: one PRNG key, or one per example ``[B, 2]``.
    loss_fn: per-example loss ``(logits, y) -> [B]`` to maximise.
    random_init: start from ``x + U(-eps, eps)``; otherwise from ``x``.
    x_init: an explicit start (TRADES: ``x + 0.001 N(0, 1)``); overrides random_init.
  """
  x = jax.lax.stop_gradient(x)
  if x_init is not None:
    x_adv = project_linf(x_init, x, eps)
  else:
    x_adv = random_start(key, x, eps) if random_init else x

  def body(_, x_adv):
    return sign_step(logits_fn, loss_fn, x_adv, x, y, eps, step_size)

  x_adv = attack_loop(body, x_adv, steps)
  return jax.lax.stop_gradient(x_adv)

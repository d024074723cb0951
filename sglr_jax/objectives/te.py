"""PGD-AT + temporal ensembling (Dong et al. 2022):
``CE(f(x'), t) + w(epoch) ||softmax f(x') - q_i||^2``, where ``q_i`` (the example's table
row) is an exponential moving average of its past predictions on ``x'``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sglr_jax.attacks import losses
from sglr_jax.objectives import at, base


def weight(hp: base.ObjectiveParams, epoch):
  """Sigmoid ramp-up ``w = te_weight * exp(-5 (1 - t)^2)`` over ``te_rampup_epochs``."""
  if hp.te_rampup_epochs <= 0:
    return jnp.asarray(hp.te_weight, jnp.float32)
  t = jnp.clip(epoch / hp.te_rampup_epochs, 0.0, 1.0)
  return hp.te_weight * jnp.exp(-5.0 * (1.0 - t) ** 2)


def loss(hp: base.ObjectiveParams, logits_adv, logits_clean, targets, rows=None, epoch=0):
  """Per example ``[B]``; ``rows [B, K]`` are the stored ensembles ``q_i``."""
  del logits_clean
  ce = losses.soft_cross_entropy(logits_adv, targets)
  probs = jax.nn.softmax(logits_adv)
  return ce + weight(hp, epoch) * jnp.sum((probs - rows) ** 2, axis=-1)


def update_rows(hp: base.ObjectiveParams, rows, logits_adv):
  """``q_i <- m q_i + (1 - m) softmax(f(x'_i))``, no gradient through it."""
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits_adv))
  return hp.te_momentum * rows + (1 - hp.te_momentum) * probs  # [B, K]


OBJECTIVE = at.OBJECTIVE._replace(loss=loss, update_rows=update_rows)

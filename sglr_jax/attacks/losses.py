"""Per-example losses: every function maps ``logits [B, K]`` (and labels) to ``[B]``.

Attacks maximise them; objectives average them. Keeping them per-example lets an
attack take the gradient of the sum, which is the per-example input gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits, labels):
  """CE with integer labels ``[B]``."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def soft_cross_entropy(logits, targets):
  """CE with a probability vector per example ``targets [B, K]``."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)


def kl_divergence(p_logits, q_logits):
  """KL(softmax(p) || softmax(q)) per example: TRADES' robustness term."""
  logp = jax.nn.log_softmax(p_logits)
  logq = jax.nn.log_softmax(q_logits)
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def margin(logits, labels):
  """Largest wrong logit minus the true logit (> 0 means misclassified)."""
  k = logits.shape[-1]
  true = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  other = jnp.max(jnp.where(jax.nn.one_hot(labels, k, dtype=bool), -jnp.inf, logits), -1)
  return other - true


def dlr(logits, labels):
  """Croce and Hein's difference-of-logits ratio (untargeted), to be maximised.

  ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``, with the 1e-12 guard of the reference.
  """
  zs = jnp.sort(logits, axis=-1)
  denom = zs[:, -1] - zs[:, -3] + 1e-12
  return margin(logits, labels) / denom


def targeted_dlr(logits, labels, targets):
  """Targeted DLR: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, to be maximised."""
  zs = jnp.sort(logits, axis=-1)
  true = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  tgt = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  denom = zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12
  return -(true - tgt) / denom

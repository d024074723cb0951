"""Training objectives as pure functions: which attack makes ``x'`` and which loss
is minimised on it. Each can be combined with SGLR (``sglr.enabled``), which
replaces the objective's hard target by the refined target of ``labels.py``.

  at      PGD-AT (Madry et al.): CE(f(x'), t)
  ls      PGD-AT + label smoothing: t = (1 - ls_eps) onehot + ls_eps / K
  trades  TRADES (Zhang et al.): CE(f(x), t) + beta KL(f(x) || f(x')), x' maximises the KL
  te      PGD-AT + temporal ensembling (Dong et al. 2022):
          CE(f(x'), t) + w(epoch) ||softmax f(x') - q_i||^2, q_i a per-example EMA
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sglr_jax.attacks import losses, pgd

OBJECTIVES = ('at', 'ls', 'trades', 'te')


class ObjectiveParams(NamedTuple):
  """Plain values, static under jit."""
  name: str
  eps: float
  step_size: float
  steps: int
  beta: float = 6.0  # TRADES
  ls_eps: float = 0.1  # label smoothing
  te_weight: float = 30.0  # TE: final weight of the consistency term
  te_momentum: float = 0.9  # TE: EMA momentum of the prediction table
  te_rampup_epochs: int = 0  # TE: epochs over which the weight ramps up (sigmoid)


def base_targets(hp: ObjectiveParams, labels, num_classes: int):
  """The objective's hard target ``[B, K]`` before any refinement."""
  onehot = jax.nn.one_hot(labels, num_classes)
  if hp.name == 'ls':
    return (1.0 - hp.ls_eps) * onehot + hp.ls_eps / num_classes
  return onehot


def attack(hp: ObjectiveParams, logits_fn, x, labels, key):
  """The inner maximisation (model in inference mode). ``x [B, H, W, C]``."""
  if hp.name == 'trades':
    clean_logits = jax.lax.stop_gradient(logits_fn(x))
    noise = 0.001 * pgd.sample_like(jax.random.normal, key, x)
    kl = lambda adv_logits, clean: losses.kl_divergence(clean, adv_logits)
    return pgd.pgd_attack(logits_fn, x, clean_logits, eps=hp.eps, step_size=hp.step_size,
                          steps=hp.steps, key=key, loss_fn=kl, x_init=x + noise)
  return pgd.pgd_attack(logits_fn, x, labels, eps=hp.eps, step_size=hp.step_size,
                        steps=hp.steps, key=key)


def te_weight(hp: ObjectiveParams, epoch):
  """Sigmoid ramp-up ``w = weight * exp(-5 (1 - t)^2)`` over ``te_rampup_epochs``."""
  if hp.te_rampup_epochs <= 0:
    return jnp.asarray(hp.te_weight, jnp.float32)
  t = jnp.clip(epoch / hp.te_rampup_epochs, 0.0, 1.0)
  return hp.te_weight * jnp.exp(-5.0 * (1.0 - t) ** 2)


def loss(hp: ObjectiveParams, logits_adv, logits_clean, targets, ensemble=None, epoch=0):
  """Per-example loss ``[B]``.

  Args:
    logits_adv: ``[B, K]`` train-mode logits on ``x'``.
    logits_clean: ``[B, K]`` train-mode logits on ``x`` (TRADES; else unused).
    targets: ``[B, K]`` hard, smoothed or refined targets.
    ensemble: ``[B, K]`` TE's normalised EMA of past predictions (TE only).
  """
  if hp.name == 'trades':
    return (losses.soft_cross_entropy(logits_clean, targets)
            + hp.beta * losses.kl_divergence(logits_clean, logits_adv))
  ce = losses.soft_cross_entropy(logits_adv, targets)
  if hp.name == 'te':
    probs = jax.nn.softmax(logits_adv)
    return ce + te_weight(hp, epoch) * jnp.sum((probs - ensemble) ** 2, axis=-1)
  return ce

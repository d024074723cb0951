"""TRADES (Zhang et al. 2019): ``CE(f(x), t) + beta KL(f(x) || f(x'))``, where ``x'``
maximises the KL from ``x + 0.001 N(0, 1)``.

Its loss needs train-mode logits on the clean input too: the clean pass runs first and
its BatchNorm update feeds the adversarial pass, as in the authors' code.
"""
from __future__ import annotations

import jax

from sglr_jax.attacks import losses, pgd
from sglr_jax.attacks.common import DEFAULT_OPS, sample_like
from sglr_jax.objectives import base


def attack(hp: base.ObjectiveParams, logits_fn, x, labels, keys, ops=DEFAULT_OPS):
  del labels  # the attack moves away from the clean prediction, not from the label
  clean_logits = jax.lax.stop_gradient(logits_fn(x))  # [B, K]
  noise = 0.001 * sample_like(jax.random.normal, keys, x)
  kl = lambda adv_logits, clean: losses.kl_divergence(clean, adv_logits)
  return pgd.pgd_attack(logits_fn, x, clean_logits, eps=hp.eps, step_size=hp.step_size,
                        steps=hp.steps, key=keys, loss_fn=kl, x_init=x + noise,
                        norm=hp.norm, ops=ops)


def forward(hp: base.ObjectiveParams, apply, variables, x, x_adv) -> base.Forward:
  """The clean pass, then the adversarial pass with the statistics it updated."""
  del hp
  logits_clean, updates = apply(variables, x)
  logits_adv, updates = apply({'params': variables['params'], **updates}, x_adv)
  return base.Forward(logits_adv, logits_clean, updates['batch_stats'])


def loss(hp: base.ObjectiveParams, logits_adv, logits_clean, targets, rows=None, epoch=0):
  """``CE(f(x), t) + beta KL(f(x) || f(x'))`` per example ``[B]``."""
  del rows, epoch
  return (losses.soft_cross_entropy(logits_clean, targets)
          + hp.beta * losses.kl_divergence(logits_clean, logits_adv))


OBJECTIVE = base.Objective(attack=attack, targets=base.one_hot_targets, forward=forward,
                           loss=loss)

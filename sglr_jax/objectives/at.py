"""PGD-AT (Madry et al.): ``CE(f(x'), t)``, ``x'`` = PGD on CE, ``t`` one-hot."""
from __future__ import annotations

from sglr_jax.attacks import losses
from sglr_jax.objectives import base


def loss(hp: base.ObjectiveParams, logits_adv, logits_clean, targets, rows=None, epoch=0):
  """``CE(f(x'), t)`` per example ``[B]``."""
  del hp, logits_clean, rows, epoch
  return losses.soft_cross_entropy(logits_adv, targets)


OBJECTIVE = base.Objective(attack=base.pgd_ce_attack, targets=base.one_hot_targets,
                           forward=base.adversarial_pass, loss=loss)

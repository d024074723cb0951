"""PGD-AT with label smoothing: the target is ``(1 - ls_eps) onehot + ls_eps / K``."""
from __future__ import annotations

from sglr_jax.objectives import at, base


def targets(hp: base.ObjectiveParams, labels, num_classes: int):
  onehot = base.one_hot_targets(hp, labels, num_classes)
  return (1.0 - hp.ls_eps) * onehot + hp.ls_eps / num_classes  # [B, K]


OBJECTIVE = at.OBJECTIVE._replace(targets=targets)

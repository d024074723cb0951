"""Training objectives: which attack makes ``x'`` and which loss is minimised on it.

One module per objective (see ``base.Objective`` for what it provides); SGLR
(``sglr.enabled``) composes with any objective without a table of its own, replacing
its hard target by the refined target of ``sglr_table``.

  at      PGD-AT (Madry et al.): CE(f(x'), t)
  ls      PGD-AT + label smoothing: t = (1 - ls_eps) onehot + ls_eps / K
  trades  TRADES (Zhang et al.): CE(f(x), t) + beta KL(f(x) || f(x')), x' maximises the KL
  te      PGD-AT + temporal ensembling (Dong et al. 2022):
          CE(f(x'), t) + w(epoch) ||softmax f(x') - q_i||^2, q_i a per-example EMA
  kd      PGD-AT + distillation from trained teachers (Chen et al. 2021):
          c_ce CE(f(x'), t) + sum_j c_j T^2 CE(softmax(g_j(x') / T), f(x') / T)

Adding an objective: a module here and an entry in ``REGISTRY``.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax

from sglr_jax import errors, sglr_table
from sglr_jax.attacks.common import DEFAULT_OPS
from sglr_jax.objectives import at, kd, ls, sglr, te, trades
from sglr_jax.objectives.base import Forward, Objective, ObjectiveParams

__all__ = ['OBJECTIVES', 'REGISTRY', 'Forward', 'Objective', 'ObjectiveParams', 'Terms',
           'attack', 'base_targets', 'get', 'train_loss', 'uses_table', 'uses_teachers']

REGISTRY = {'at': at.OBJECTIVE, 'ls': ls.OBJECTIVE, 'trades': trades.OBJECTIVE,
            'te': te.OBJECTIVE, 'kd': kd.OBJECTIVE}
OBJECTIVES = tuple(REGISTRY)


class Terms(NamedTuple):
  """What one evaluation of the training loss gives the train step."""
  per_example: jax.Array  # [B]
  logits_adv: jax.Array  # [B, K] train-mode logits on x'
  batch_stats: Any  # BatchNorm statistics after the objective's passes
  rows: Optional[jax.Array]  # [B, K] new table rows (None without a table)


def get(name: str) -> Objective:
  if name not in REGISTRY:
    raise errors.ConfigError(f'objective.name={name!r}; allowed: {", ".join(OBJECTIVES)}')
  return REGISTRY[name]


def uses_table(hp: ObjectiveParams, sp: Optional[sglr_table.SGLRParams]) -> bool:
  """Whether training reads and writes per-example rows of the label table."""
  return sp is not None or get(hp.name).update_rows is not None


def uses_teachers(hp: ObjectiveParams) -> bool:
  """Whether the objective distils from trained teachers (their logits on ``x'``)."""
  return hp.name == 'kd'


def attack(hp: ObjectiveParams, logits_fn, x, labels, keys, ops=DEFAULT_OPS):
  """The inner maximisation (model in inference mode). ``x [B, H, W, C]``."""
  return get(hp.name).attack(hp, logits_fn, x, labels, keys, ops)


def base_targets(hp: ObjectiveParams, labels, num_classes: int):
  """The objective's hard target ``[B, K]`` before any refinement."""
  return get(hp.name).targets(hp, labels, num_classes)


def train_loss(hp: ObjectiveParams, sp: Optional[sglr_table.SGLRParams], apply, variables,
               x, x_adv, targets, rows, epoch, teacher_logits=None) -> Terms:
  """The objective's passes, loss and table rows, with SGLR on top when ``sp`` is set.

  ``apply(variables, x) -> (logits, updates)`` runs the model in train mode;
  ``targets [B, K]`` are ``base_targets``; ``rows [B, K]`` the examples' stored rows;
  ``teacher_logits``: KD's teachers' logits on ``x'``, one ``[B, K]`` each (or None).
  """
  obj = get(hp.name)
  fwd = obj.forward(hp, apply, variables, x, x_adv)
  if sp is not None:
    per_example, new_rows = sglr.loss_and_rows(obj, hp, sp, apply, variables, x, fwd,
                                               targets, rows, epoch)
  else:
    new_rows = rows if obj.update_rows is None else obj.update_rows(hp, rows, fwd.adv)
    per_example = obj.loss(hp, fwd.adv, fwd.clean, targets, rows, epoch)
  if teacher_logits:
    per_example = kd.loss_with_teachers(hp, per_example, fwd.adv, teacher_logits)
  return Terms(per_example, fwd.adv, fwd.batch_stats, new_rows)

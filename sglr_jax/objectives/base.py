"""The contract every objective module fulfils, and the parts most of them share.

An objective is four pure functions of plain parameters and arrays (``Objective``):
the attack that makes ``x'`` (model in inference mode), the base target, the
train-mode forward passes, the per-example loss, and optionally the update of its
per-example table. ``objectives.train_loss`` composes them (with SGLR on top).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax

from sglr_jax.attacks import pgd
from sglr_jax.attacks.common import DEFAULT_OPS


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
  norm: str = 'Linf'  # the training attack's threat model: 'Linf' or 'L2'
  kd_temperature: float = 2.0  # KD: temperature of the distillation softmaxes
  kd_ce_weight: float = 0.3  # KD: weight of the CE on the (possibly refined) target
  kd_weight: float = 0.6  # KD: weight of the robust teacher's term
  kd_std_weight: float = 0.1  # KD: weight of the standard teacher's term


class Forward(NamedTuple):
  """The train-mode passes of one loss evaluation."""
  adv: jax.Array  # [B, K] logits on x'
  clean: Optional[jax.Array]  # [B, K] logits on x; None: the objective makes no clean pass
  batch_stats: Any  # BatchNorm statistics after the passes


class Objective(NamedTuple):
  """One objective's parts. ``apply(variables, x) -> (logits, updates)`` runs the model
  in train mode with mutable BatchNorm statistics.

  attack: ``(hp, logits_fn, x, labels, keys, ops) -> x'`` ``[B, H, W, C]``.
  targets: ``(hp, labels, num_classes) -> [B, K]``, the hard target before any refinement.
  forward: ``(hp, apply, variables, x, x_adv) -> Forward``; the order of the passes is
    the order of the BatchNorm updates.
  loss: ``(hp, logits_adv, logits_clean, targets, rows, epoch) -> [B]``; ``rows [B, K]``
    are the examples' stored table rows (None without a table).
  update_rows: ``(hp, rows, logits_adv) -> rows [B, K]``, the new table rows; None for
    an objective without a table.
  """
  attack: Callable
  targets: Callable
  forward: Callable
  loss: Callable
  update_rows: Optional[Callable] = None


def pgd_ce_attack(hp: ObjectiveParams, logits_fn, x, labels, keys, ops=DEFAULT_OPS):
  """Madry et al.'s inner maximisation: PGD on CE from a random start in the ball."""
  return pgd.pgd_attack(logits_fn, x, labels, eps=hp.eps, step_size=hp.step_size,
                        steps=hp.steps, key=keys, norm=hp.norm, ops=ops)


def one_hot_targets(hp: ObjectiveParams, labels, num_classes: int):
  del hp
  return jax.nn.one_hot(labels, num_classes)  # [B, K]


def adversarial_pass(hp: ObjectiveParams, apply, variables, x, x_adv) -> Forward:
  """One train-mode pass, on ``x'`` only."""
  del hp, x
  logits_adv, updates = apply(variables, x_adv)
  return Forward(logits_adv, None, updates['batch_stats'])

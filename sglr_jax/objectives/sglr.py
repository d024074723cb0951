"""Self-Guided Label Refinement on top of any objective without a table of its own.

The objective's hard target is replaced by the refined target of ``sglr_table``, which
also needs the train-mode logits on the clean input: an objective that makes no clean
pass (AT, LS) gets an extra one whose BatchNorm update is dropped; TRADES' own is reused.
"""
from __future__ import annotations

from sglr_jax import sglr_table
from sglr_jax.objectives import base


def loss_and_rows(obj: base.Objective, hp: base.ObjectiveParams, sp: sglr_table.SGLRParams,
                  apply, variables, x, fwd: base.Forward, base_targets, rows, epoch):
  """``(per-example loss [B], refined rows [B, K])``; before ``sp.start_epoch`` the
  target is ``base_targets`` and the rows stay (no recompilation at the switch)."""
  logits_clean = fwd.clean
  if logits_clean is None:  # the extra clean pass; its BatchNorm update is dropped
    logits_clean = apply(variables, x)[0]
  new_rows, targets = sglr_table.refine_batch(rows, fwd.adv, logits_clean, base_targets, sp,
                                              epoch >= sp.start_epoch)
  return obj.loss(hp, fwd.adv, logits_clean, targets, None, epoch), new_rows

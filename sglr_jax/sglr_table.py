"""Self-Guided Label Refinement: the per-example soft-label table ``Y [N, K]``.

The refinement is written for ONE example (``refine_one``) and vmapped over the
batch (``refine_batch``); see ``docs/METHOD.md``:

  p_i    = lam * softmax(f(x'_i) / T) + (1 - lam) * softmax(f(x_i) / T)   (Eq. 7)
  Y[i]  <- m * Y[i] + (1 - m) * p_i                                       (Eq. 8)
  t_i    = (1 - alpha) * b_i + alpha * Y[i]   (the freshly updated row)

``b_i`` is the objective's hard target: ``onehot(y_i)`` for PGD-AT and TRADES, the
uniformly smoothed label for PGD-AT + LS.

Before ``start_epoch`` (0-based epoch index) the target is the one-hot label and
the table is left untouched: plain adversarial training.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class SGLRParams(NamedTuple):
  """Plain floats (static under jit)."""
  momentum: float  # m, EMA momentum
  lam: float  # weight of the adversarial prediction in p
  temperature: float  # T of the label softmax
  alpha: float  # smoothing level; 0 is plain AT
  start_epoch: int  # 0-based index of the first epoch with refined labels


def init_table(labels, num_classes: int, dtype=jnp.float32):
  """``Y[i] = onehot(y_i)``: ``labels [N] -> [N, K]``."""
  return jax.nn.one_hot(jnp.asarray(labels), num_classes, dtype=dtype)


def refine_one(row, logits_adv, logits_clean, base_target, hp: SGLRParams):
  """One example: ``row [K]`` (stored ``Y[i]``), logits ``[K]``, ``base_target [K]``.

  Returns ``(new_row [K], target [K])``. No gradient flows through either.
  """
  logits_adv = jax.lax.stop_gradient(logits_adv)
  logits_clean = jax.lax.stop_gradient(logits_clean)
  t = hp.temperature
  p = hp.lam * jax.nn.softmax(logits_adv / t) + (1.0 - hp.lam) * jax.nn.softmax(logits_clean / t)
  new_row = hp.momentum * row + (1.0 - hp.momentum) * p
  target = (1.0 - hp.alpha) * base_target + hp.alpha * new_row
  return new_row, target


_refine_vmapped = jax.vmap(refine_one, in_axes=(0, 0, 0, 0, None))


def refine_batch(rows, logits_adv, logits_clean, base_targets, hp: SGLRParams, active):
  """Batch version with the warm-up switch.

  Args:
    rows: ``[B, K]`` the batch's stored rows of the table.
    logits_adv, logits_clean: ``[B, K]``.
    base_targets: ``[B, K]`` the objective's hard targets (one-hot of the possibly
      noisy labels, or their smoothed version).
    active: traced bool, ``epoch >= start_epoch``; when False the rows stay and
      the targets are the base targets, so no recompilation happens at the switch.

  Returns:
    ``(new_rows [B, K], targets [B, K])``.
  """
  new_rows, targets = _refine_vmapped(rows, logits_adv, logits_clean, base_targets, hp)
  new_rows = jnp.where(active, new_rows, rows)
  targets = jnp.where(active, targets, base_targets)
  return new_rows, targets


def write_rows(table, indices, rows):
  """``table[indices] = rows`` for a replicated table ``[N, K]``."""
  return table.at[indices].set(rows)


def write_owned_rows(table_shard, indices, rows, row_offset):
  """Row-sharded table: write only the rows this shard owns.

  ``table_shard [N / D, K]`` holds global rows ``[row_offset, row_offset + N / D)``;
  indices outside that range are dropped.
  """
  local = indices - row_offset
  n = table_shard.shape[0]
  local = jnp.where((local >= 0) & (local < n), local, n)  # n is out of bounds: dropped
  return table_shard.at[local].set(rows, mode='drop')


def read_owned_rows(table_shard, indices, row_offset):
  """Row-sharded table: the rows this shard owns, zeros elsewhere (psum to gather)."""
  local = indices - row_offset
  n = table_shard.shape[0]
  owned = (local >= 0) & (local < n)
  rows = table_shard[jnp.clip(local, 0, n - 1)]
  return jnp.where(owned[:, None], rows, 0.0)

"""Sanity checks around the ensemble, after the reference's ``checks.py``.

An AutoAttack number can be wrong without any attack failing loudly: a randomised
model, a model that outputs probabilities, gradients that vanish, or gradient masking
that only the black-box Square sees through. ``run_autoattack`` runs ``before`` on the
first batch and ``after`` on the results; each problem becomes a flag (a dict with the
check's name and a one-line message), printed as a warning and returned in the result.
The final perturbation size and NaN count are always reported (``summary``).
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from sglr_jax.attacks import losses


class AutoAttackFlag(UserWarning):
  """The category of the checks' console warnings."""


def flag(check: str, message: str) -> dict:
  """A finding: warned on process 0 only (every process finds the same), returned."""
  if jax.process_index() == 0:
    warnings.warn(f'AutoAttack check {check!r}: {message}', AutoAttackFlag, stacklevel=3)
  return {'check': check, 'message': message}


def _l2_rows(v):
  v = np.asarray(v, np.float64).reshape(len(v), -1)
  return np.sqrt(np.sum(v * v, 1))


def check_randomized(logits_fn, x, y, n: int = 5, alpha: float = 1e-4) -> list:
  """``n`` passes on ``x``: a flag if the predictions' accuracy or the normalised logits
  differ (the reference's ``check_randomized``)."""
  outs = [np.asarray(logits_fn(x), np.float64) for _ in range(n)]
  correct = [int(np.sum(o.argmax(1) == y)) for o in outs]
  unit = [o / (_l2_rows(o)[:, None] + 1e-10) for o in outs]
  diff = max((_l2_rows(a - b).max() for i, a in enumerate(unit) for b in unit[i + 1:]),
             default=0.0)
  if len(set(correct)) > 1 or diff > alpha:
    return [flag('randomized', f'{n} passes on the same inputs differ (max normalised logit '
                 f'change {diff:.2e}); the model seems randomised at inference: its '
                 'AutoAttack number is not reliable without EOT (version="rand")')]
  return []


def check_range_output(logits, alpha: float = 1e-5) -> list:
  """A flag if the outputs look like probabilities (in [0, 1], rows summing to 1)."""
  logits = np.asarray(logits, np.float64)
  if (logits.max() < 1 + alpha and logits.min() > -alpha
      and (np.abs(logits.sum(-1) - 1) < alpha).all()):
    return [flag('probabilities', 'the model outputs a probability distribution; the '
                 'attacks need logits (remove the final softmax)')]
  return []


def check_zero_gradients(logits_fn, x, y) -> list:
  """A flag for correctly classified points (those the attacks start on) whose DLR-loss
  input gradient is exactly zero. (On a misclassified point whose label ranks third the
  DLR loss is the constant 1: no sign of masking.)"""
  grad = jax.grad(lambda z: jnp.sum(losses.dlr(logits_fn(z), y)))(jnp.asarray(x))
  correct = np.asarray(logits_fn(x)).argmax(1) == y
  zero = int(np.sum((np.abs(np.asarray(grad)).reshape(len(x), -1).sum(1) == 0) & correct))
  if zero:
    return [flag('zero_gradients', f'{zero} of {int(correct.sum())} correctly classified '
                 'points have a zero input gradient; '
                 'gradient-based attacks cannot work on them (gradient masking?)')]
  return []


def check_n_classes(num_classes: int, attacks, apgd_targets: int, fab_targets: int) -> list:
  """A flag when the targeted attacks ask for more target classes than there are."""
  out = []
  if ('apgd-t' in attacks or 'apgd-dlr' in attacks) and num_classes < 4:
    out.append(f'{num_classes} classes: the (targeted) DLR loss needs at least 4')
  elif 'apgd-t' in attacks and apgd_targets + 1 > num_classes:
    out.append(f'APGD-T asks for {apgd_targets} target classes, {num_classes - 1} possible')
  if 'fab-t' in attacks and fab_targets + 1 > num_classes:
    out.append(f'FAB-T asks for {fab_targets} target classes, {num_classes - 1} possible')
  return [flag('n_classes', m) for m in out]


def check_square(acc_after: dict, alpha: float = 0.002) -> list:
  """A flag when Square lowers the robust accuracy by more than ``alpha`` (0.2 points)
  after the white-box attacks: a sign of gradient masking."""
  if 'square' not in acc_after or len(acc_after) < 2:
    return []
  before = min(v for k, v in acc_after.items() if k != 'square')
  if acc_after['square'] < before - alpha:
    return [flag('square_beats_white_box', f'Square lowered the robust accuracy by '
                 f'{100 * (before - acc_after["square"]):.2f} points after the white-box '
                 'attacks: the gradients may be masked; run Square longer or an adaptive attack')]
  return []


def summary(x_adv, x, norm: str) -> dict:
  """The largest perturbation (in ``norm``) and the NaN count of ``x_adv``."""
  d = np.nan_to_num(np.asarray(x_adv, np.float64) - x).reshape(len(x), -1)
  norms = np.abs(d).max(1) if norm == 'Linf' else np.sqrt(np.sum(d * d, 1))
  return {'max_perturbation': float(norms.max()) if len(x) else 0.0,
          'nan_count': int(np.isnan(np.asarray(x_adv)).sum())}


def check_summary(s: dict, eps: float, norm: str) -> list:
  out = []
  if s['max_perturbation'] > eps * (1 + 1e-5) + 1e-6:
    out.append(flag('perturbation_too_large', f'max {norm} perturbation '
                    f'{s["max_perturbation"]:.6f} > eps {eps:.6f}'))
  if s['nan_count']:
    out.append(flag('nan', f'{s["nan_count"]} NaN values in the adversarial examples'))
  return out


def before(logits_fn, x, y, num_classes: int, attacks, cfg, randomized: bool = True) -> list:
  """The checks on the first batch ``x, y`` before the attacks; returns the flags.
  ``randomized``: run ``check_randomized`` (the 'rand' version expects a random model
  and skips it, as the reference does)."""
  flags = check_randomized(logits_fn, x, y) if randomized else []
  flags += check_range_output(logits_fn(x))
  flags += check_zero_gradients(logits_fn, x, y)
  flags += check_n_classes(num_classes, attacks, cfg.apgd_t_n_target_classes,
                           cfg.fab_n_target_classes)
  return flags

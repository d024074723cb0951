"""Where a run's curves get vertical markers: learning-rate decays and the SGLR start."""
from __future__ import annotations

import math

from sglr_jax.evaluation.results import number
from sglr_jax.report.runs import Run, field, series, truthy


def lr_decay_epochs(run: Run) -> list[float]:
  """x positions of learning-rate decays.

  From the ``lr`` history when it has one: a decay between epochs e0 and e1 is drawn at
  their midpoint, which is right whatever convention the schedule uses. Smooth schedules
  (cosine, or an lr that changes at most epochs) have no discrete decay and give []. Without
  an ``lr`` history, the config's ``schedule.decay_epochs`` (piecewise) up to the last epoch.
  """
  if str(field(run.config, 'schedule.name', '')).lower() == 'cosine':
    return []
  lrs = [(e, v) for e, v in zip(*series(run.history, 'lr')) if v > 0]
  if len(lrs) >= 2:
    changes = [(e0, e1, v1 < v0) for (e0, v0), (e1, v1) in zip(lrs, lrs[1:])
               if not math.isclose(v0, v1, rel_tol=1e-6, abs_tol=0.0)]
    if len(changes) > max(4, len(lrs) // 5):
      return []  # smooth schedule
    return [(e0 + e1) / 2 for e0, e1, down in changes if down]
  decays = field(run.config, 'schedule.decay_epochs', [])
  if not isinstance(decays, (list, tuple)):
    decays = [decays]
  last = run.history[-1]['epoch']
  return sorted(float(d) for d in map(number, decays) if d is not None and d <= last)


def sglr_start_epoch(run: Run) -> float | None:
  """x position of the first refined epoch (drawn just before it), or None.

  ``sglr.start_epoch`` is the 0-based index of the first refined epoch, i.e. the
  1-based history epoch ``start_epoch + 1``; the line sits half an epoch before it."""
  if not truthy(field(run.config, 'sglr.enabled', False)):
    return None
  start = number(field(run.config, 'sglr.start_epoch'))
  if start is None or start + 1 > run.history[-1]['epoch']:
    return None
  return start + 0.5

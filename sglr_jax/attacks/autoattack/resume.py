"""A resumable ensemble: its per-point state in one npz file, replaced atomically.

The state is what the host loop already holds between programs: which attacks are
done, the robust flags and the adversarial points, and inside an attack its next run
(or Square's next query slice) with that attack's own arrays. It is written at every
attack boundary and, inside an attack, at a run (or query-slice) boundary once
``every_s`` seconds have passed: the clock decides only when a state is saved, never
what it holds, so a resumed run computes exactly what an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Optional

import jax
import numpy as np

from sglr_jax import errors


class StateMismatchError(errors.UserError, ValueError):
  """The state file belongs to another run (points, eps, attacks, config, key, model)."""


def fingerprint(x, y, eps, attacks, cfg, key_data, variables=(),
                randomised: bool = False) -> str:
  """What a state file belongs to: the points, labels, eps, attacks, config, key and
  model variables (and whether the model is randomised)."""
  h = hashlib.sha256()
  leaves = [np.asarray(v) for v in jax.tree.leaves(variables)]
  for a in [np.ascontiguousarray(x), np.ascontiguousarray(y), np.asarray(key_data)] + leaves:
    h.update(a.tobytes())
  h.update(json.dumps([float(eps), list(attacks), repr(cfg)]
                      + (['randomised'] if randomised else [])).encode())
  return h.hexdigest()


class StateFile:
  """``load()`` the saved state (None if none), ``save(...)`` it (temp file, then
  ``os.replace``), ``due()`` whether ``every_s`` seconds passed since the last save."""

  def __init__(self, path: str, fp: str, every_s: float = 60.0):
    self.path, self.fp, self.every_s = path, fp, every_s
    self.last = time.monotonic()

  def load(self) -> Optional[dict]:
    if not os.path.exists(self.path):
      return None
    with np.load(self.path, allow_pickle=False) as z:
      meta = json.loads(str(z['meta']))
      if meta['fingerprint'] != self.fp:
        raise StateMismatchError(f'{self.path} is the state of another AutoAttack run '
                                 '(other points, eps, attacks, config, key or model); '
                                 'delete it to start afresh')
      arrays = {k: z[k] for k in z.files if k != 'meta'}
    partial = None
    if meta['partial'] is not None:
      partial = dict(meta['partial'], arrays={k[8:]: v for k, v in arrays.items()
                                              if k.startswith('partial_')})
    return dict(done=meta['done'], acc_after=meta['acc_after'], seconds=meta['seconds'],
                robust=arrays['robust'], x_adv=arrays['x_adv'],
                broken_by=arrays['broken_by'], partial=partial)

  def due(self) -> bool:
    return time.monotonic() - self.last >= self.every_s

  def save(self, done, acc_after, seconds, robust, x_adv, broken_by, partial=None):
    """``partial``: None, or ``{'attack', 'step', 'arrays': {name: array}}``."""
    meta = dict(fingerprint=self.fp, done=list(done), acc_after=dict(acc_after),
                seconds=dict(seconds),
                partial=None if partial is None else {'attack': partial['attack'],
                                                      'step': int(partial['step'])})
    arrays = dict(robust=robust, x_adv=x_adv, broken_by=broken_by)
    if partial is not None:
      arrays.update({f'partial_{k}': v for k, v in partial['arrays'].items()})
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    tmp = f'{self.path}.tmp{os.getpid()}.npz'
    np.savez(tmp, meta=np.asarray(json.dumps(meta)), **arrays)
    os.replace(tmp, self.path)
    self.last = time.monotonic()

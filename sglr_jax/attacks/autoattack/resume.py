"""A resumable ensemble: its per-point state in one npz file, replaced atomically.

The state is what the host loop already holds between programs: which attacks are
done, the robust flags and the adversarial points, and inside an attack its next run
(or Square's next query slice) with that attack's own arrays. It is written at every
attack boundary and, inside an attack, at a run (or query-slice) boundary once
``every_s`` seconds have passed: the clock decides only when a state is saved, never
what it holds, so a resumed run computes exactly what an uninterrupted one would.

The path is an ``etils.epath`` one (local, gs://, ...). Across processes, which all
hold the same state, process 0 writes the file and reads it for all (``hosts``).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from typing import Optional

import jax
import numpy as np
from etils import epath

from sglr_jax import errors
from sglr_jax.attacks.autoattack import hosts


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
  rename), ``due()`` whether ``every_s`` seconds passed since the last save."""

  def __init__(self, path, fp: str, every_s: float = 60.0):
    self.path, self.fp, self.every_s = epath.Path(path), fp, every_s
    self.last = time.monotonic()

  def load(self) -> Optional[dict]:
    data = None
    if hosts.lead() and self.path.exists():
      data = self.path.read_bytes()
    data = hosts.broadcast_bytes(data)
    if data is None:
      return None
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
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
    """``partial``: None, or ``{'attack', 'step', 'arrays': {name: array}}``. Writes
    on process 0 only."""
    self.last = time.monotonic()
    if not hosts.lead():
      return
    meta = dict(fingerprint=self.fp, done=list(done), acc_after=dict(acc_after),
                seconds=dict(seconds),
                partial=None if partial is None else {'attack': partial['attack'],
                                                      'step': int(partial['step'])})
    arrays = dict(robust=robust, x_adv=x_adv, broken_by=broken_by)
    if partial is not None:
      arrays.update({f'partial_{k}': v for k, v in partial['arrays'].items()})
    self.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = self.path.parent / f'{self.path.name}.tmp{os.getpid()}.npz'
    with tmp.open('wb') as f:
      np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)
    tmp.replace(self.path)
    self.last = time.monotonic()

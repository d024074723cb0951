"""SIGTERM (preemption) asks the training loop to checkpoint at the next step boundary."""
from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preemption:
  """A context manager the loop asks after every step whether to save and stop.

  One process: a Python SIGTERM handler sets a flag, read after every step.
  Under ``jax.distributed`` JAX's preemption service owns SIGTERM (it is installed
  by ``jax.distributed.initialize`` and tells every process of a notice that any
  of them got); ``reached_preemption_sync_point(step)`` then turns True on all
  processes at the same step, so they save the same checkpoint. No Python handler
  is installed in that case: it would replace JAX's. Without the service (it is
  on by default), processes agree on a stop only at the end of an epoch.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._sync = False

  def __enter__(self):
    multi = jax.process_count() > 1 or jax.distributed.is_initialized()
    self._sync = multi and bool(jax.config.jax_enable_preemption_service)
    if not self._sync:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread
        self._previous = None
    return self

  def _handle(self, *_):
    self.requested = True

  def check(self, step: int) -> bool:
    """Called after every train step with the number of steps done (all processes)."""
    if self._sync and not self.requested:
      self.requested = bool(multihost_utils.reached_preemption_sync_point(step))
    if jax.process_count() > 1 and not self._sync:
      return False  # the processes could disagree; see at_epoch_end
    return self.requested

  def at_epoch_end(self) -> bool:
    """Whether any process was asked to stop (all processes call it, and agree)."""
    if jax.process_count() > 1 and not self._sync:
      flags = multihost_utils.process_allgather(np.asarray([int(self.requested)], np.int32))
      self.requested = bool(np.any(np.asarray(flags)))
    return self.requested

  def __exit__(self, *_):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

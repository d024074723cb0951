"""SIGTERM (preemption) asks the training loop to checkpoint at the next step boundary."""
from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preemption:
  """A context manager the loop asks after every step whether to save and stop.

  Without a ``jax.distributed`` client (one process, or processes that were never
  joined): a Python SIGTERM handler sets a flag, read after every step. With a client
  JAX's preemption service owns SIGTERM (installed by ``jax.distributed.initialize``, it
  tells every process of a notice that any of them got);
  ``reached_preemption_sync_point(step)`` then turns True on all processes at the same
  step, so they save the same checkpoint. No Python handler is installed in that case:
  it would replace JAX's. With a client but the service turned off, the Python handler
  is installed and processes agree on a stop only at the end of an epoch. The choice
  depends on whether the client exists, not on the process count: a one-process run
  under a launcher JAX detects has a client and the service.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._sync = False

  def __enter__(self):
    self._sync = (jax.distributed.is_initialized()
                  and bool(jax.config.jax_enable_preemption_service))
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

"""TensorBoard event files of a run, written without TensorFlow (``tensorboardX``).

Two TensorBoard runs under ``WORKDIR/tensorboard/``:

- ``epoch/``: every number of each ``history.jsonl`` record, at step = the epoch
  (``history.append_history`` calls ``write_epoch``). Each record goes to its own
  small event file that starts with a purge marker at its epoch, so a resumed run that
  logs an epoch again replaces the earlier one (TensorBoard drops the events of that
  run at or after the marker's step), as ``history.jsonl``'s last line per epoch wins.
- ``step/``: ``StepLog``'s per-step scalars (``loss``, ``step_time_s``,
  ``images_per_s``) at step = the optimizer step, averaged over windows of ``every``
  steps (one device sync per window, so logging does not stall the step pipeline).
  A resumed run's writer purges the steps after its starting step.

Written by process 0 only (the caller decides; ``StepLog(enabled=False)`` does nothing).
Watch with ``tensorboard --logdir WORKDIR``. For a URL workdir (``gs://``) the event
files are written to a local temporary directory and copied up whole after each write
(``_Mirror``): tensorboardX writes ``gs://`` only through its own client.
"""
from __future__ import annotations

import numbers
import os
import shutil
import tempfile
import time
from typing import Optional

import jax

from sglr_jax import storage

DIR = 'tensorboard'
EPOCH_RUN = 'epoch'
STEP_RUN = 'step'


def _writer(logdir: str, purge_step: int, what: str):
  """A writer of a new event file that sorts after every earlier one of ``logdir``.

  TensorBoard reads a run's files in name order; tensorboardX names them by the second,
  so the suffix adds the nanosecond (and the process) to order, and not overwrite, files
  made within one second.
  """
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  suffix = f'.{time.time_ns():020d}.{os.getpid()}.{what}'
  if storage.is_url(logdir):
    return _Mirror(SummaryWriter(tempfile.mkdtemp(prefix='sglr_tb_'), purge_step=purge_step,
                                 filename_suffix=suffix), logdir)
  return SummaryWriter(logdir, purge_step=purge_step, filename_suffix=suffix)


class _Mirror:
  """A local writer whose event files are copied to ``remote`` after each flush."""

  def __init__(self, writer, remote: str):
    self._w, self._remote = writer, remote

  def add_scalar(self, *args):
    self._w.add_scalar(*args)

  def _upload(self):
    local = self._w.logdir
    for name in os.listdir(local):
      storage.copy_file(os.path.join(local, name), storage.join(self._remote, name))

  def flush(self):
    self._w.flush()
    self._upload()

  def close(self):
    self._w.close()
    self._upload()
    shutil.rmtree(self._w.logdir, ignore_errors=True)


def scalars(record: dict) -> dict:
  """The TensorBoard scalars of a history record: its numbers, except ``epoch``."""
  return {k: float(v) for k, v in record.items()
          if k != 'epoch' and isinstance(v, numbers.Real) and not isinstance(v, bool)}


def write_epoch(workdir: str, record: dict) -> None:
  """Writes ``record``'s scalars at step ``record['epoch']`` (a file of its own)."""
  epoch = int(record['epoch'])
  w = _writer(storage.join(workdir, DIR, EPOCH_RUN), epoch, f'epoch{epoch}')
  try:
    for tag, value in scalars(record).items():
      w.add_scalar(tag, value, epoch)
  finally:
    w.close()


class StepLog:
  """Per-step loss, step time and images/s of a run, in windows of ``every`` steps.

  ``add(step, metrics)`` after each train step (``metrics``: the step's device dict with
  ``loss_sum`` and ``count``); every ``every`` steps the window's metrics are fetched
  (one sync) and written at its last step: the mean loss per example, the mean wall time
  per step and the images per second of ``global_batch``-sized steps. Call ``restart()``
  where the steps resume after other work (evaluation, checkpoints: not step time) and
  ``flush()`` before it, to write a partial window. The first window after the log is
  made (or after ``restart(compiling=True)``) carries the loss only: its time includes
  compilation. A context manager; ``close()`` flushes.
  """

  def __init__(self, workdir: str, first_step: int, global_batch: int, every: int = 100,
               enabled: Optional[bool] = None):
    """``first_step``: the optimizer steps done when the log starts (0, or a resume's)."""
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.every = max(1, int(every))
    self.global_batch = int(global_batch)
    self._pending: list = []  # [(step, device metrics)]
    self._timed = False
    self._t0 = time.perf_counter()
    self._w = None
    if self.enabled:
      self._w = _writer(storage.join(workdir, DIR, STEP_RUN), int(first_step) + 1, 'step')

  def restart(self, compiling: bool = False) -> None:
    """Starts the clock of the next window (pending steps are dropped: ``flush`` first)."""
    self._pending = []
    self._t0 = time.perf_counter()
    if compiling:
      self._timed = False

  def add(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    self._pending.append((int(step), metrics))
    if len(self._pending) >= self.every:
      self.flush()

  def flush(self) -> None:
    """Writes the pending window (a device sync) and starts the next."""
    if not self.enabled or not self._pending:
      return
    steps = [s for s, _ in self._pending]
    got = jax.device_get([m for _, m in self._pending])
    elapsed = time.perf_counter() - self._t0
    count = sum(float(m['count']) for m in got)
    step = steps[-1]
    if count:
      self._w.add_scalar('loss', sum(float(m['loss_sum']) for m in got) / count, step)
    if self._timed and elapsed > 0:
      self._w.add_scalar('step_time_s', elapsed / len(steps), step)
      self._w.add_scalar('images_per_s', self.global_batch * len(steps) / elapsed, step)
    self._timed = True
    self._w.flush()
    self._pending = []
    self._t0 = time.perf_counter()

  def close(self) -> None:
    if self._w is not None:
      self.flush()
      self._w.close()
      self._w = None

  def __enter__(self) -> StepLog:
    return self

  def __exit__(self, *exc) -> None:
    if exc[0] is None:
      self.close()
    elif self._w is not None:  # the run failed: keep what was written, fetch nothing more
      self._w.close()
      self._w = None

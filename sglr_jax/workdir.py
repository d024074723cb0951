"""The workdir: checked before anything is written, and locked by the run that trains in it.

The lock is an ``fcntl`` lock on ``WORKDIR/.lock`` (POSIX record locks also work on
NFS). The kernel drops it when its process ends in any way (SIGKILL, OOM, a node
reboot on local disks), so a lock left by a dead run is never stale: the next run simply
takes it; the file's text (pid and host of the last holder) is only for the message.
Under ``jax.distributed`` process 0 takes it and every process learns the outcome.

An object-store workdir (``gs://``) has no lock: object stores offer no lock that a
killed run releases (a lock object would outlive a preempted run and block every
resume), so two runs started in one ``gs://`` workdir are not detected; a warning says
so. A shared POSIX mount (NFS, gcsfuse) keeps the ``fcntl`` lock (gcsfuse does not
enforce it across hosts).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket

import jax
import numpy as np

from sglr_jax import errors, storage

LOCK_FILE = '.lock'


class WorkdirLockedError(errors.UserError):
  """Another run trains in this workdir."""


def check_writable(workdir: str) -> None:
  """Raises ``UserError`` when ``workdir`` cannot be a directory this process writes.
  A URL is only checked for the package its scheme needs (nothing is written)."""
  if storage.is_url(workdir):
    storage.check_url_support(workdir)
    return
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise errors.UserError(f'--workdir={workdir} is a file, not a directory')
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise errors.UserError(f'--workdir={workdir} lies under {probe}, which is a file')
  if not os.access(probe, os.W_OK | os.X_OK):
    raise errors.UserError(f'--workdir={workdir}: {probe} is not writable')


class Lock:
  """An exclusive lock on a workdir for the lifetime of a run (a context manager)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self._fd = None

  def __enter__(self):
    if storage.is_url(self.workdir):
      if jax.process_index() == 0:
        logging.warning('%s is an object store: no workdir lock (a second run started in '
                        'it is not detected)', self.workdir)
      return self
    holder = None
    if jax.process_index() == 0:
      holder = self._acquire()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      ok = multihost_utils.process_allgather(np.asarray([int(holder is None)], np.int32))
      if not np.all(np.asarray(ok)) and holder is None:
        holder = 'another run (seen by process 0)'
    if holder is not None:
      self.__exit__()
      raise WorkdirLockedError(
          f'{self.workdir} is in use by {holder}; wait for it to end or use another --workdir')
    return self

  def _acquire(self):
    """None when locked, else the text of the holder."""
    os.makedirs(self.workdir, exist_ok=True)
    path = os.path.join(self.workdir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EACCES, errno.EAGAIN):
        os.close(fd)
        raise
      text = os.pread(fd, 200, 0).decode(errors='replace').strip()
      os.close(fd)
      return text or 'another run'
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} on host {socket.gethostname()}\n'.encode(), 0)
    self._fd = fd
    return None

  def __exit__(self, *_):
    if self._fd is not None:
      os.close(self._fd)  # closing drops the lock
      self._fd = None


def write_text(workdir: str, name: str, text: str) -> None:
  """Writes ``WORKDIR/name`` whole (a local path or a URL), creating the workdir."""
  storage.makedirs(workdir)
  storage.write_text(storage.join(workdir, name), text)

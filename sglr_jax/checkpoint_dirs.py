"""The directories of ``WORKDIR/checkpoints/<kind>/``: their keys, their sizes, the
free-space check before a save, and the agreement of all processes on what is there.

Every process of a run must take the same branch around a collective save or restore, so
the keys a restore or a save decides on are process 0's listing, broadcast to the others
(hosts that see a shared directory at different moments, or object-store listings that
lag, cannot diverge). A single process lists for itself.
"""
from __future__ import annotations

import errno
import os

import jax
import numpy as np

from sglr_jax import storage

COMMIT_FILE = 'commit_success.txt'  # Orbax's commit marker, in both commit modes
_WORD = 1 << 31  # keys cross the broadcast as two int32 words (no x64 needed)


def steps(root: str) -> list[int]:
  """This process's listing of the step directories (digits only: Orbax's temporary
  directories are not steps)."""
  names = storage.listdir(root)
  if storage.is_url(root):  # object-store "directories" are key prefixes: no files here
    return sorted(int(n) for n in names if n.isdigit())
  return sorted(int(n) for n in names if n.isdigit() and storage.isdir(storage.join(root, n)))


def _broadcast(values: list[int]) -> list[int]:
  """Process 0's non-negative ints on every process (the others' ``values`` are ignored)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  mine = np.asarray(values if jax.process_index() == 0 else [], np.int64)
  n = int(np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(len(mine), np.int32))))
  words = np.zeros((max(n, 1), 2), np.int32)
  if jax.process_index() == 0 and n:
    words[:n, 0], words[:n, 1] = mine // _WORD, mine % _WORD
  got = np.asarray(multihost_utils.broadcast_one_to_all(words)).astype(np.int64)
  return [int(hi * _WORD + lo) for hi, lo in got[:n]]


def _one_process() -> bool:
  """Whether this is the only process, asked without starting a JAX backend when
  ``jax.distributed`` is off (a process that forks workers must not start one)."""
  return not jax.distributed.is_initialized() or jax.process_count() == 1


def shared_steps(root: str) -> list[int]:
  """Process 0's ``steps(root)`` on every process (all processes must call it)."""
  if _one_process():
    return steps(root)
  return _broadcast(steps(root) if jax.process_index() == 0 else [])


def shared_flag(flag) -> bool:
  """Process 0's ``flag()`` on every process (only process 0 evaluates it)."""
  if _one_process():
    return bool(flag())
  return bool(_broadcast([int(bool(flag()))] if jax.process_index() == 0 else [])[0])


def all_processes_ok(ok: bool) -> bool:
  """True when ``ok`` on every process, so that all take the same branch."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray([int(ok)], np.int32))
  return bool(np.all(np.asarray(flags)))


def size(directory: str) -> int:
  """Bytes of the files under ``directory`` (files that vanish meanwhile count 0)."""
  total = 0
  for rel in storage.files_under(directory) if storage.exists(directory) else ():
    try:
      total += storage.size(storage.join(directory, *rel.split('/')))
    except OSError:
      pass
  return total


def check_space(roots: list[str], root: str) -> None:
  """Raises ENOSPC on every process when the disk of ``root`` has less room than the
  newest checkpoint under ``roots`` takes: a save that fails half way leaves Orbax's
  writer threads printing tracebacks. Process 0 measures (``root`` may not exist yet
  elsewhere); all processes take the same branch. Object stores have no free-space
  figure: nothing is checked there."""
  if storage.is_url(root):
    return
  message = ''
  if jax.process_index() == 0:
    sizes = [size(storage.join(r, str(keys[-1]))) for r in roots for keys in [steps(r)] if keys]
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    if sizes and free < max(sizes):
      message = f'No space left on device ({free} bytes free, a checkpoint takes {max(sizes)})'
  if not all_processes_ok(not message):
    raise OSError(errno.ENOSPC, message or 'No space left on device (on process 0)', root)


def copy_in_place(src: str, root: str, key: int) -> None:
  """``root/key``: a copy of the committed checkpoint ``src`` written in place, its commit
  marker last (the commit-file protocol: until the marker exists the copy is an
  interrupted save). For storage without renames or links (object stores, gcsfuse)."""
  final = storage.join(root, str(key))
  storage.rmtree(final)
  storage.makedirs(root)
  files = storage.files_under(src)
  for rel in sorted(files, key=lambda r: r == COMMIT_FILE):
    dst = storage.join(final, *rel.split('/'))
    storage.makedirs(storage.dirname(dst))
    storage.copy_file(storage.join(src, *rel.split('/')), dst)

"""Orbax checkpoints of the full train state: ``latest`` (resume), ``best``, ``final``.

Layout: ``WORKDIR/checkpoints/<kind>/<key>/{state,progress}``. ``best`` and
``final`` are keyed by the number of completed epochs, ``latest`` by the optimizer
step (``state.step``), so that a mid-epoch checkpoint (SIGTERM,
``train.checkpoint_every_steps``) and the epoch-end ones sort in training order.
``state`` is the ``TrainState`` pytree (every process writes the shards it owns);
``progress`` is a small JSON written by process 0: the running epoch, the steps
done in it and their metric sums, so that a resumed epoch logs the same numbers.

Each save goes through ``ocp.Checkpointer`` (not ``CheckpointManager``: the
manager calls ``reached_preemption_sync_point`` with its own keys, which would
derail JAX's multi-process preemption protocol that the train loop drives with
the step count). The checkpointer writes into a temporary directory and renames
it when every process is done, so a run killed at any moment leaves complete
checkpoints plus possibly a temporary directory, which is ignored and removed.
``latest`` keeps two (the newest and the one before). A checkpoint that exists
but fails to read (truncated or missing files, no commit marker) is skipped with
a warning and moved to ``checkpoints/corrupt/`` (kept for inspection, out of the
way of later saves); the one before it is used. A readable checkpoint whose
arrays do not fit the current config (another model, say) is an error, not a
fallback: nothing is moved.

Asynchronous saves (``save(..., asynchronous=True)``): the call returns once the arrays
are copied to host memory; Orbax writes and commits them in a background thread while
training goes on. At most one save is pending: ``wait()`` waits for it and then does
what follows a commit (the ``also`` links, dropping old checkpoints, the closing
barrier). Every later save and every read (``restore``, ``available``,
``read_progress``, ``committed``) waits first, and a run must call ``wait()`` before it
ends; a write error surfaces there. ``also=(('best', 3), ...)``: the same checkpoint
under other kinds and keys, hard links to the committed files (a copy where the storage
has no links), so an epoch end whose ``best`` and ``final`` equal ``latest`` writes the
state once. A link is made in a temporary directory and renamed, as Orbax commits.

Integrity: every checkpoint holds ``MANIFEST`` (SHA-256 of each of its files), written
by process 0 after every process's files are complete and before Orbax's commit (the
rename), so a committed checkpoint always carries one. ``restore`` verifies it: a file
whose bytes changed (disk or copy damage) makes the checkpoint unreadable like a
truncated one. Checkpoints written before manifests existed are read unverified.
``read_only=True`` (evaluation, reports) never moves or removes anything: a damaged
checkpoint is only named.

Topology: the label table is restored into the current row count and sharding
(Orbax appends zero rows or drops rows beyond the dataset, which are never read),
so a checkpoint written on 4 devices restores on 1 or 2, replicated or sharded,
each process reading only the rows it holds.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import time
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from sglr_jax import distributed, errors
from sglr_jax.manifest import verify_manifest, write_manifest

KINDS = ('latest', 'best', 'final')
KEEP = {'latest': 2, 'best': 1, 'final': 1}
TABLE_KEY = ('label_table',)
COMMIT_FILE = 'commit_success.txt'
_barrier_ids = itertools.count()


class IncompatibleCheckpointError(errors.UserError, ValueError):
  """A readable checkpoint whose arrays do not match the config's state."""


def _path(workdir: str, kind: str) -> str:
  return os.path.abspath(os.path.join(workdir, 'checkpoints', kind))


def _checkpointer(asynchronous: bool = False):
  """Orbax's checkpointer whose handler also writes ``MANIFEST`` before the commit.

  ``finalize`` runs after every process saved its files, before the rename (on every
  process in the asynchronous checkpointer: process 0 writes the manifest). It is
  wrapped on the instance: Orbax maps ``args.Composite`` to the exact handler class, so
  a subclass would not be used.
  """
  handler = ocp.CompositeCheckpointHandler()
  finalize = handler.finalize

  def finalize_with_manifest(directory):
    finalize(directory)
    if jax.process_index() == 0:
      write_manifest(str(directory))

  handler.finalize = finalize_with_manifest
  return ocp.AsyncCheckpointer(handler) if asynchronous else ocp.Checkpointer(handler)


def _sync(name: str):
  """All processes wait here (coordination-service barrier; no-op on one process)."""
  distributed.sync_processes(f'sglr_ckpt_{name}_{next(_barrier_ids)}')


_pending = None  # (AsyncCheckpointer, what follows its commit): the save in flight


def save(workdir: str, kind: str, state, step: int, progress: Optional[dict] = None, *,
         asynchronous: bool = False, also: tuple = ()):
  """Saves ``state`` (and the JSON-able ``progress``) as checkpoint ``step`` of ``kind``,
  then drops the oldest beyond the kind's ``KEEP``.

  All processes must call it: each writes the shards it owns. A checkpoint already
  at ``step`` (left by a run that fell back to an earlier one) is replaced.
  ``asynchronous``: returns once the arrays are in host memory (see the module
  docstring; ``wait()`` completes it). ``also``: ``(kind, key)`` pairs that get the same
  checkpoint as links once it is committed.
  """
  global _pending
  wait()
  root = _path(workdir, kind)
  if jax.process_index() == 0:
    os.makedirs(root, exist_ok=True)
  _check_space(workdir, root)
  _sync(f'save_start_{kind}_{step}')
  items = {'state': ocp.args.PyTreeSave(state)}
  if progress is not None:
    items['progress'] = ocp.args.JsonSave(progress)
  done = lambda: _after_commit(workdir, kind, step, tuple(also))
  ckptr = _checkpointer(asynchronous)
  try:
    ckptr.save(epath.Path(root) / str(step), args=ocp.args.Composite(**items), force=True)
  except BaseException:
    ckptr.close()
    raise
  if asynchronous:
    _pending = (ckptr, done)
    return
  ckptr.close()
  done()


def wait() -> None:
  """Waits for the pending asynchronous save (if any) and completes it; re-raises its
  write error. All processes must call it (it ends in a barrier)."""
  global _pending
  if _pending is None:
    return
  ckptr, done = _pending
  _pending = None
  try:
    ckptr.wait_until_finished()
  finally:
    ckptr.close()
  done()


def _after_commit(workdir: str, kind: str, step: int, also: tuple) -> None:
  """Links ``also``, drops old checkpoints (process 0), then every process meets."""
  if jax.process_index() == 0:
    src = os.path.join(_path(workdir, kind), str(step))
    for other, key in also:
      _link_tree(src, _path(workdir, other), key)
      _prune(_path(workdir, other), other, key)
    _prune(_path(workdir, kind), kind, step)
  _sync(f'save_end_{kind}_{step}')


def _prune(root: str, kind: str, step: int) -> None:
  """Keeps ``step`` and the newest ``KEEP - 1`` before it; keys after it belong to a
  timeline that was abandoned (a resume from an earlier checkpoint)."""
  older = [s for s in _steps(root) if s < step]
  keep = set(older[len(older) - (KEEP[kind] - 1):] if KEEP[kind] > 1 else []) | {step}
  for old in _steps(root):
    if old not in keep:
      shutil.rmtree(os.path.join(root, str(old)), ignore_errors=True)


def _link_tree(src: str, root: str, key: int) -> None:
  """``root/key``: the files of the committed checkpoint ``src`` as hard links (copies
  where linking fails), assembled in a temporary directory that the interrupted-save
  clean-up recognises, then renamed into place (replacing one at ``key``)."""
  os.makedirs(root, exist_ok=True)
  tmp = os.path.join(root, f'{key}.orbax-checkpoint-tmp-link')
  shutil.rmtree(tmp, ignore_errors=True)
  for r, _, names in os.walk(src):
    dst_dir = os.path.join(tmp, os.path.relpath(r, src))
    os.makedirs(dst_dir, exist_ok=True)
    for n in names:
      try:
        os.link(os.path.join(r, n), os.path.join(dst_dir, n))
      except OSError:
        shutil.copy2(os.path.join(r, n), os.path.join(dst_dir, n))
  final = os.path.join(root, str(key))
  if os.path.exists(final):
    shutil.rmtree(final)
  os.replace(tmp, final)


def _check_space(workdir: str, root: str) -> None:
  """Raises ENOSPC on every process when the disk of ``root`` has less room than the
  newest checkpoint takes: a save that fails half way leaves Orbax's writer threads
  printing tracebacks. Process 0 measures (``root`` may not exist yet elsewhere); all
  processes take the same branch."""
  message = ''
  if jax.process_index() == 0:
    sizes = [_size(os.path.join(_path(workdir, kind), str(steps[-1])))
             for kind in KINDS for steps in [_steps(_path(workdir, kind))] if steps]
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    if sizes and free < max(sizes):
      message = f'No space left on device ({free} bytes free, a checkpoint takes {max(sizes)})'
  if not _all_processes_ok(not message):
    raise OSError(errno.ENOSPC, message or 'No space left on device (on process 0)', root)


def _size(directory: str) -> int:
  """Bytes of the files under ``directory`` (files that vanish meanwhile count 0)."""
  total = 0
  for r, _, names in os.walk(directory):
    for f in names:
      try:
        total += os.path.getsize(os.path.join(r, f))
      except OSError:
        pass
  return total


def _steps(root: str) -> list[int]:
  """Step directories (digits only: Orbax's temporary directories are not steps)."""
  if not os.path.isdir(root):
    return []
  return sorted(int(n) for n in os.listdir(root)
                if n.isdigit() and os.path.isdir(os.path.join(root, n)))


def available(workdir: str, kind: str) -> list[int]:
  """The checkpoint keys of ``kind``, oldest first (whether readable is not checked)."""
  wait()
  return _steps(_path(workdir, kind))


def read_progress(workdir: str, kind: str, step: int) -> Optional[dict]:
  """The ``progress`` item of one checkpoint (None if it has none)."""
  wait()
  path = epath.Path(_path(workdir, kind)) / str(step) / 'progress'
  if not path.exists():
    return None
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path)


def restore(workdir: str, kind: str, target, shardings=None, with_progress: bool = False,
            read_only: bool = False, damaged: Optional[list] = None):
  """Restores the newest readable checkpoint of ``kind`` into the structure of ``target``.

  ``shardings``: the state's shardings (default: those of ``target``'s arrays).
  Returns ``(state, key)``, or ``(state, key, progress)`` with ``with_progress``
  (``progress`` is None for a checkpoint without one), or None when there is none.
  Leftover temporary directories of interrupted saves are removed. An unreadable
  checkpoint is skipped with a warning and set aside; a readable one that does
  not fit ``target`` raises ``IncompatibleCheckpointError``. ``read_only``: nothing
  is removed or moved (evaluation); ``damaged`` (a list) collects ``(key, reason)`` of
  each unreadable checkpoint, so a caller can name them.
  """
  wait()
  root = _path(workdir, kind)
  if not read_only:
    _remove_temporaries(root)
  steps = _steps(root)
  if not steps:
    return None
  if shardings is None:
    shardings = jax.tree.map(lambda x: x.sharding, target)
  for step in reversed(steps):
    error, got = None, None
    try:
      got = _restore_step(os.path.join(root, str(step)), target, shardings)
    except IncompatibleCheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      error = e
    if _all_processes_ok(error is None):
      state, progress = got
      return (state, step, progress) if with_progress else (state, step)
    reason = _reason(error)
    if damaged is not None:
      damaged.append((step, reason))
    logging.warning('checkpoint %s/%d is unreadable (%s); %strying an earlier one', kind, step,
                    reason, '' if read_only else 'setting it aside and ')
    if not read_only:
      _set_aside(workdir, kind, step)
  return None


def _reason(error) -> str:
  """One line about why a checkpoint failed to read (some library errors have no
  usable ``str``: pybind11 exceptions print a bound method)."""
  if error is None:
    return 'unreadable on another process'
  text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ''
  if not text or '<bound method' in text:
    text = 'its files could not be decoded'
  return f'{type(error).__name__}: {text}'


def _restore_step(path: str, target, shardings):
  """``(state, progress)`` of one checkpoint directory; raises if it is damaged."""
  if not os.path.exists(os.path.join(path, COMMIT_FILE)):
    raise FileNotFoundError(f'{COMMIT_FILE} is missing: the save did not complete')
  if jax.process_index() == 0:  # the others learn of a mismatch through _all_processes_ok
    verify_manifest(path)
  # 'default': the single-item layout of checkpoints written before 'progress' existed
  item = 'default' if not os.path.isdir(os.path.join(path, 'state')) and os.path.isdir(
      os.path.join(path, 'default')) else 'state'
  meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path) / item)
  _check_compatible(ocp.tree.to_flat_dict(getattr(meta, 'tree', meta)),
                    ocp.tree.to_flat_dict(target))
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings)
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
  table = abstract.label_table
  # Rows beyond the dataset are padding (never read): zeros appended or rows dropped
  # when the device count changed. Every other array must match exactly.
  restore_args = restore_args.replace(label_table=ocp.ArrayRestoreArgs(
      sharding=table.sharding, global_shape=table.shape, dtype=table.dtype, strict=False))
  items = {item: ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args)}
  has_progress = os.path.isdir(os.path.join(path, 'progress'))
  if has_progress:
    items['progress'] = ocp.args.JsonRestore()
  ckptr = _checkpointer()
  try:
    got = ckptr.restore(epath.Path(path), args=ocp.args.Composite(**items))
  finally:
    ckptr.close()
  return got[item], (got['progress'] if has_progress else None)


def _check_compatible(saved: dict, wanted: dict):
  """Same leaves and shapes; the label table may differ in its (padded) row count."""
  missing = sorted(set(wanted) - set(saved))
  extra = sorted(set(saved) - set(wanted))
  if missing or extra:
    raise IncompatibleCheckpointError(
        f'the checkpoint holds other arrays than this config builds (missing: '
        f'{["/".join(k) for k in missing[:3]]}, unexpected: {["/".join(k) for k in extra[:3]]}); '
        'was it written with another model or objective? Use a fresh --workdir')
  for key, want in wanted.items():
    got_shape, want_shape = tuple(saved[key].shape), tuple(np.shape(want))
    if key == TABLE_KEY:
      ok = len(got_shape) == 2 and got_shape[1] == want_shape[1]
    else:
      ok = got_shape == want_shape
    if not ok:
      raise IncompatibleCheckpointError(
          f'checkpoint array {"/".join(key)} has shape {got_shape}, this config needs '
          f'{want_shape}; was it written with another model, dataset or objective? '
          'Use a fresh --workdir')


def _all_processes_ok(ok: bool) -> bool:
  """True when ``ok`` on every process, so that all take the same branch."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray([int(ok)], np.int32))
  return bool(np.all(np.asarray(flags)))


def _remove_temporaries(root: str):
  """Process 0 removes what interrupted saves left (names that are not step numbers)."""
  if jax.process_index() == 0 and os.path.isdir(root):
    for name in os.listdir(root):
      if not name.isdigit() and '.orbax-checkpoint-tmp' in name:
        logging.warning('removing %s, left by an interrupted save', os.path.join(root, name))
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
  _sync(f'tmp_{os.path.basename(root)}')


def _set_aside(workdir: str, kind: str, step: int):
  """Moves a damaged checkpoint to ``checkpoints/corrupt/`` (process 0; all wait)."""
  if jax.process_index() == 0:
    src = os.path.join(_path(workdir, kind), str(step))
    dst_dir = os.path.join(os.path.dirname(_path(workdir, kind)), 'corrupt')
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, f'{kind}-{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    try:
      shutil.move(src, dst)
      logging.warning('moved the damaged checkpoint to %s', dst)
    except OSError as e:
      logging.warning('could not move %s aside (%s)', src, e)
  _sync(f'aside_{kind}_{step}')


def committed(workdir: str, kind: str, key: int) -> bool:
  """Whether checkpoint ``key`` of ``kind`` exists with its commit marker (a complete save)."""
  wait()
  return os.path.exists(os.path.join(_path(workdir, kind), str(key), COMMIT_FILE))

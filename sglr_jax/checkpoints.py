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

Storage (``sglr_jax.storage``): the workdir may be a local path or a URL (``gs://``).
``commit`` ('auto', 'rename', 'commit_file'; ``train.checkpoint_commit``) picks Orbax's
commit: 'rename' as above; 'commit_file' writes the step directory in place and commits
by writing ``commit_success.txt`` last (object stores and FUSE mounts, whose directory
renames are not atomic); 'auto' is 'commit_file' on URLs and FUSE mounts. Either way a
committed checkpoint holds the marker, so readers accept both. Under 'commit_file' a
step directory without the marker is an interrupted save (removed like a temporary
directory); ``also`` copies in place, marker last. The keys are process 0's listing,
broadcast (``checkpoint_dirs``), so all processes decide alike.
"""
from __future__ import annotations

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

from sglr_jax import distributed, errors, storage
from sglr_jax.checkpoint_dirs import COMMIT_FILE, all_processes_ok as _all_processes_ok
from sglr_jax.checkpoint_dirs import check_space, copy_in_place, shared_flag, shared_steps
from sglr_jax.checkpoint_dirs import steps as _steps
from sglr_jax.manifest import verify_manifest, write_manifest

KINDS = ('latest', 'best', 'final')
KEEP = {'latest': 2, 'best': 1, 'final': 1}
TABLE_KEY = ('label_table',)
_ATOMICITY = {'rename': ocp.options.AtomicityMode.ATOMIC_RENAME,
              'commit_file': ocp.options.AtomicityMode.COMMIT_FILE}
_barrier_ids = itertools.count()


class IncompatibleCheckpointError(errors.UserError, ValueError):
  """A readable checkpoint whose arrays do not match the config's state."""


def _path(workdir: str, kind: str) -> str:
  return storage.abspath(storage.join(workdir, 'checkpoints', kind))


def _checkpointer(asynchronous: bool = False, mode: str = 'rename'):
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
  options = ocp.options.AtomicityOptions(mode=_ATOMICITY[mode])
  cls = ocp.AsyncCheckpointer if asynchronous else ocp.Checkpointer
  return cls(handler, atomicity_options=options)


def _sync(name: str):
  """All processes wait here (coordination-service barrier; no-op on one process)."""
  distributed.sync_processes(f'sglr_ckpt_{name}_{next(_barrier_ids)}')


_pending = None  # (AsyncCheckpointer, what follows its commit): the save in flight


def save(workdir: str, kind: str, state, step: int, progress: Optional[dict] = None, *,
         asynchronous: bool = False, also: tuple = (), commit: str = 'auto'):
  """Saves ``state`` (and the JSON-able ``progress``) as checkpoint ``step`` of ``kind``,
  then drops the oldest beyond the kind's ``KEEP``.

  All processes must call it: each writes the shards it owns. A checkpoint already
  at ``step`` (left by a run that fell back to an earlier one) is replaced.
  ``asynchronous``: returns once the arrays are in host memory (see the module
  docstring; ``wait()`` completes it). ``also``: ``(kind, key)`` pairs that get the same
  checkpoint as links once it is committed. ``commit``: see the module docstring.
  """
  global _pending
  wait()
  root = _path(workdir, kind)
  mode = storage.commit_mode(commit, root)
  if jax.process_index() == 0:
    storage.makedirs(root)
  check_space([_path(workdir, k) for k in KINDS], root)
  _sync(f'save_start_{kind}_{step}')
  items = {'state': ocp.args.PyTreeSave(state)}
  if progress is not None:
    items['progress'] = ocp.args.JsonSave(progress)
  done = lambda: _after_commit(workdir, kind, step, tuple(also), mode)
  ckptr = _checkpointer(asynchronous, mode)
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


def _after_commit(workdir: str, kind: str, step: int, also: tuple, mode: str) -> None:
  """Links ``also``, drops old checkpoints (process 0), then every process meets."""
  if jax.process_index() == 0:
    src = storage.join(_path(workdir, kind), str(step))
    for other, key in also:
      if mode == 'commit_file' or storage.is_url(src):  # no renames or links there
        copy_in_place(src, _path(workdir, other), key)
      else:
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
      storage.rmtree(storage.join(root, str(old)))


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


def available(workdir: str, kind: str) -> list[int]:
  """The checkpoint keys of ``kind``, oldest first (whether readable is not checked;
  process 0's listing: all processes must call it)."""
  wait()
  return shared_steps(_path(workdir, kind))


def read_progress(workdir: str, kind: str, step: int) -> Optional[dict]:
  """The ``progress`` item of one checkpoint (None if it has none)."""
  wait()
  path = epath.Path(storage.join(_path(workdir, kind), str(step), 'progress'))
  if not path.exists():
    return None
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path)


def restore(workdir: str, kind: str, target, shardings=None, with_progress: bool = False,
            read_only: bool = False, damaged: Optional[list] = None, commit: str = 'auto'):
  """Restores the newest readable checkpoint of ``kind`` into the structure of ``target``.

  ``shardings``: the state's shardings (default: those of ``target``'s arrays).
  Returns ``(state, key)``, or ``(state, key, progress)`` with ``with_progress``
  (``progress`` is None for a checkpoint without one), or None when there is none.
  Leftover temporary directories of interrupted saves are removed. An unreadable
  checkpoint is skipped with a warning and set aside; a readable one that does
  not fit ``target`` raises ``IncompatibleCheckpointError``. ``read_only``: nothing
  is removed or moved (evaluation); ``damaged`` (a list) collects ``(key, reason)`` of
  each unreadable checkpoint, so a caller can name them. ``commit``: the mode the
  checkpoints were written with (under 'commit_file' an unmarked one was interrupted).
  """
  wait()
  root = _path(workdir, kind)
  mode = storage.commit_mode(commit, root)
  if not read_only:
    _remove_temporaries(root, mode)
  steps = shared_steps(root)
  if not steps:
    return None
  if shardings is None:
    shardings = jax.tree.map(lambda x: x.sharding, target)
  for step in reversed(steps):
    error, got = None, None
    try:
      got = _restore_step(storage.join(root, str(step)), target, shardings, mode)
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


def _restore_step(path: str, target, shardings, mode: str = 'rename'):
  """``(state, progress)`` of one checkpoint directory; raises if it is damaged."""
  if not storage.exists(storage.join(path, COMMIT_FILE)):
    raise FileNotFoundError(f'{COMMIT_FILE} is missing: the save did not complete')
  if jax.process_index() == 0:  # the others learn of a mismatch through _all_processes_ok
    verify_manifest(path)
  # 'default': the single-item layout of checkpoints written before 'progress' existed
  item = 'default' if not storage.isdir(storage.join(path, 'state')) and storage.isdir(
      storage.join(path, 'default')) else 'state'
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
  has_progress = storage.isdir(storage.join(path, 'progress'))
  if has_progress:
    items['progress'] = ocp.args.JsonRestore()
  ckptr = _checkpointer(mode=mode)
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


def _remove_temporaries(root: str, mode: str = 'rename'):
  """Process 0 removes what interrupted saves left: names that are not step numbers
  and, under 'commit_file', step directories without the commit marker."""
  if jax.process_index() == 0:
    for name in storage.listdir(root):
      path = storage.join(root, name)
      if (not name.isdigit() and '.orbax-checkpoint-tmp' in name) or (
          mode == 'commit_file' and name.isdigit()
          and not storage.exists(storage.join(path, COMMIT_FILE))):
        logging.warning('removing %s, left by an interrupted save', path)
        storage.rmtree(path)
  _sync(f'tmp_{storage.basename(root)}')


def _set_aside(workdir: str, kind: str, step: int):
  """Moves a damaged checkpoint to ``checkpoints/corrupt/`` (process 0; all wait)."""
  if jax.process_index() == 0:
    src = storage.join(_path(workdir, kind), str(step))
    dst_dir = storage.join(storage.dirname(_path(workdir, kind)), 'corrupt')
    storage.makedirs(dst_dir)
    dst = storage.join(dst_dir, f'{kind}-{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    try:
      storage.move_tree(src, dst)
      logging.warning('moved the damaged checkpoint to %s', dst)
    except OSError as e:
      logging.warning('could not move %s aside (%s)', src, e)
  _sync(f'aside_{kind}_{step}')


def committed(workdir: str, kind: str, key: int) -> bool:
  """Whether checkpoint ``key`` of ``kind`` exists with its commit marker (a complete save;
  process 0's answer: all processes must call it)."""
  wait()
  return shared_flag(
      lambda: storage.exists(storage.join(_path(workdir, kind), str(key), COMMIT_FILE)))

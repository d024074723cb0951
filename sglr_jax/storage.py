"""Workdir paths: local (or shared POSIX) directories and object-store URLs (``gs://``).

Every access to a workdir goes through these helpers. A local path takes the same
``os`` / ``shutil`` calls as ever (appends are fsynced, replacements are atomic renames);
a URL goes through ``etils.epath`` (``fsspec``: ``gcsfs`` for ``gs://``). Object stores
have no appends, renames, hard links, locks or free-space figures: an append there reads
the object and writes it back whole, a directory move copies and deletes, and the
callers skip what has no meaning (the lock, the disk-space check).

fsspec's listing cache is turned off for ``gs://``: Orbax writes array data through
TensorStore, past fsspec, and a cached listing would miss those files.
"""
from __future__ import annotations

import os
import posixpath
import shutil
from typing import Optional

import fsspec
import fsspec.config
from etils import epath

from sglr_jax import errors

fsspec.config.conf.setdefault('gcs', {}).setdefault('use_listings_cache', False)

COMMIT_MODES = ('rename', 'commit_file')
_FS_PACKAGES = {'gs': 'gcsfs', 'gcs': 'gcsfs', 's3': 's3fs', 'az': 'adlfs'}


def is_url(path) -> bool:
  """An object-store URL (``gs://b/run``), not a local path."""
  return '://' in os.fspath(path)


def check_url_support(path) -> None:
  """A ``UserError`` naming the package to install when ``path``'s scheme needs one that
  is missing (``gcsfs`` for ``gs://``); nothing for local paths."""
  if not is_url(path):
    return
  scheme = os.fspath(path).split('://', 1)[0].lower()
  package = _FS_PACKAGES.get(scheme)
  if package is None:
    raise errors.UserError(f'{path}: unsupported URL scheme {scheme}:// (gs:// works)')
  try:
    __import__(package)
  except ImportError:
    raise errors.UserError(
        f'{path}: {scheme}:// paths need the package {package!r}: pip install {package}'
    ) from None


def join(base, *names) -> str:
  """``os.path.join`` for local paths; ``/``-joined for URLs (``os.path`` would make
  ``gs://b`` a local ``gs:/b``)."""
  base = os.fspath(base)
  if is_url(base):
    return posixpath.join(base, *names)
  return os.path.join(base, *names)


def abspath(path) -> str:
  path = os.fspath(path)
  return path.rstrip('/') if is_url(path) else os.path.abspath(path)


def basename(path) -> str:
  path = os.fspath(path)
  return posixpath.basename(path.rstrip('/')) if is_url(path) else os.path.basename(
      os.path.normpath(path))


def dirname(path) -> str:
  path = os.fspath(path)
  return posixpath.dirname(path.rstrip('/')) if is_url(path) else os.path.dirname(path)


def exists(path) -> bool:
  return epath.Path(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path) -> bool:
  return epath.Path(path).is_dir() if is_url(path) else os.path.isdir(path)


def isfile(path) -> bool:
  return epath.Path(path).is_file() if is_url(path) else os.path.isfile(path)


def listdir(path) -> list[str]:
  """Entry names of a directory ([] when there is none)."""
  if is_url(path):
    p = epath.Path(path)
    return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
  return os.listdir(path) if os.path.isdir(path) else []


def makedirs(path) -> None:
  """Creates ``path`` and its parents (an object store has no directories: nothing)."""
  if is_url(path):
    return
  os.makedirs(path, exist_ok=True)


def rmtree(path) -> None:
  """Removes a directory tree; missing or partly removable trees are no error."""
  if not is_url(path):
    shutil.rmtree(path, ignore_errors=True)
    return
  try:
    if epath.Path(path).exists():
      epath.Path(path).rmtree()
  except (OSError, FileNotFoundError):
    pass


def open_file(path, mode: str = 'r'):
  """A file object (text modes as UTF-8 for local paths)."""
  if is_url(path):
    return epath.Path(path).open(mode)
  return open(path, mode, encoding=None if 'b' in mode else 'utf-8')


def read_text(path) -> str:
  with open_file(path, 'r') as f:
    return f.read()


def write_text(path, text: str) -> None:
  """Writes a whole file (an object, made visible whole, on object stores)."""
  if is_url(path):
    epath.Path(path).write_text(text)
    return
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


def write_bytes(path, data: bytes) -> None:
  if is_url(path):
    epath.Path(path).write_bytes(data)
    return
  with open(path, 'wb') as f:
    f.write(data)


def append_text(path, text: str) -> None:
  """Appends ``text`` (fsynced on local disks). Object stores cannot append: the object
  is read and written back whole, which is safe for the one process that writes it."""
  if is_url(path):
    p = epath.Path(path)
    p.write_text((p.read_text() if p.exists() else '') + text)
    return
  with open(path, 'a', encoding='utf-8') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def files_under(directory) -> list[str]:
  """Relative paths (``/``-separated) of every file under ``directory``, sorted."""
  directory = os.fspath(directory)
  if is_url(directory):
    fs, root = fsspec.core.url_to_fs(directory)
    root = root.rstrip('/')
    return sorted(p[len(root) + 1:] for p in fs.find(root) if p.startswith(root + '/'))
  out = []
  for r, _, names in os.walk(directory):
    for n in names:
      out.append(os.path.relpath(os.path.join(r, n), directory))
  return sorted(out)


def size(path) -> int:
  """Bytes of one file."""
  return epath.Path(path).stat().length if is_url(path) else os.path.getsize(path)


def copy_file(src, dst) -> None:
  """Copies one file (server-side within one object store)."""
  if is_url(src) and is_url(dst):
    fs, s = fsspec.core.url_to_fs(os.fspath(src))
    fs.copy(s, fsspec.core.url_to_fs(os.fspath(dst))[1])
  elif is_url(src) or is_url(dst):
    epath.Path(src).copy(epath.Path(dst), overwrite=True)
  else:
    shutil.copy2(src, dst)


def move_tree(src, dst) -> None:
  """Moves a directory tree (a rename on local disks; copy and delete on object stores)."""
  if not is_url(src):
    shutil.move(src, dst)
    return
  fs, s = fsspec.core.url_to_fs(os.fspath(src))
  fs.mv(s, fsspec.core.url_to_fs(os.fspath(dst))[1], recursive=True)


# ------------------------------------------------------------------ commit mode

def mount_fstype(path, mounts_file: str = '/proc/mounts') -> Optional[str]:
  """The file-system type of the mount that holds local ``path`` (None if unknown)."""
  if is_url(path):
    return None
  target = os.path.realpath(os.path.abspath(os.fspath(path)))
  best, fstype = '', None
  try:
    with open(mounts_file, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except OSError:
    return None
  for line in lines:
    parts = line.split()
    if len(parts) < 3:
      continue
    point = parts[1].replace('\\040', ' ')
    inside = target == point or target.startswith(point.rstrip('/') + '/')
    if inside and len(point) > len(best):
      best, fstype = point, parts[2]
  return fstype


def commit_mode(setting: str, path, mounts_file: str = '/proc/mounts') -> str:
  """``train.checkpoint_commit`` resolved for checkpoints under ``path``: 'auto' is
  'commit_file' on object stores and FUSE mounts (gcsfuse: directory renames are not
  atomic, or refused), 'rename' elsewhere."""
  setting = str(setting or 'auto')
  if setting in COMMIT_MODES:
    return setting
  if setting != 'auto':
    raise errors.ConfigError(
        f"train.checkpoint_commit={setting!r}: expected 'auto', 'rename' or 'commit_file'")
  if is_url(path):
    return 'commit_file'
  fstype = mount_fstype(path, mounts_file) or ''
  return 'commit_file' if fstype.startswith('fuse') else 'rename'

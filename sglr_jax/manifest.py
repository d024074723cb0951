"""A checkpoint directory's ``MANIFEST``: the SHA-256 of each of its files, written just
before Orbax commits the checkpoint and verified before it is restored, so damaged bytes
are named instead of silently restored. Local paths and URLs (``sglr_jax.storage``)."""
from __future__ import annotations

import hashlib
import json
import os

from sglr_jax import storage

MANIFEST = 'MANIFEST'
# Orbax writes its commit marker and rewrites its step metadata when it commits, after
# the manifest: not hashed.
_UNHASHED = (MANIFEST, 'commit_success.txt', '_CHECKPOINT_METADATA')


class CorruptCheckpointError(ValueError):
  """A checkpoint file's bytes differ from its manifest."""


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with storage.open_file(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      h.update(chunk)
  return h.hexdigest()


def _files(directory: str) -> list[str]:
  """The hashed files of a checkpoint directory, relative paths, sorted."""
  return [rel for rel in storage.files_under(directory) if rel not in _UNHASHED]


def _full(directory: str, rel: str) -> str:
  return storage.join(directory, *rel.split('/')) if storage.is_url(directory) else (
      os.path.join(directory, rel))


def write_manifest(directory: str) -> None:
  """Writes ``directory/MANIFEST``: {relative path: sha256} of its files (fsynced on
  local disks; an object is visible whole once written)."""
  manifest = {rel: _sha256(_full(directory, rel)) for rel in _files(directory)}
  text = json.dumps({'version': 1, 'sha256': manifest}, indent=0, sort_keys=True)
  path = storage.join(directory, MANIFEST)
  if storage.is_url(path):
    storage.write_text(path, text)
    return
  with open(path, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def verify_manifest(directory: str) -> bool:
  """Raises ``CorruptCheckpointError`` naming the first file that differs from the
  manifest; False (unverified) for a checkpoint written without one."""
  path = storage.join(directory, MANIFEST)
  if not storage.exists(path):
    return False
  try:
    want = json.loads(storage.read_text(path))['sha256']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CorruptCheckpointError(f'{path} is unreadable ({type(e).__name__})') from None
  for rel, digest in sorted(want.items()):
    full = _full(directory, rel)
    if not storage.isfile(full):
      raise CorruptCheckpointError(f'{full} is missing')
    if _sha256(full) != digest:
      raise CorruptCheckpointError(f'{full} does not match its checksum (damaged bytes)')
  return True

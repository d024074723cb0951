"""A checkpoint directory's ``MANIFEST``: the SHA-256 of each of its files, written just
before Orbax commits the checkpoint and verified before it is restored, so damaged bytes
are named instead of silently restored."""
from __future__ import annotations

import hashlib
import json
import os

MANIFEST = 'MANIFEST'
# Orbax writes its commit marker and rewrites its step metadata when it commits, after
# the manifest: not hashed.
_UNHASHED = (MANIFEST, 'commit_success.txt', '_CHECKPOINT_METADATA')


class CorruptCheckpointError(ValueError):
  """A checkpoint file's bytes differ from its manifest."""


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      h.update(chunk)
  return h.hexdigest()


def _files(directory: str) -> list[str]:
  """The hashed files of a checkpoint directory, relative paths, sorted."""
  out = []
  for root, _, names in os.walk(directory):
    for n in names:
      rel = os.path.relpath(os.path.join(root, n), directory)
      if rel not in _UNHASHED:
        out.append(rel)
  return sorted(out)


def write_manifest(directory: str) -> None:
  """Writes ``directory/MANIFEST``: {relative path: sha256} of its files (fsynced)."""
  manifest = {rel: _sha256(os.path.join(directory, rel)) for rel in _files(directory)}
  path = os.path.join(directory, MANIFEST)
  with open(path, 'w') as f:
    json.dump({'version': 1, 'sha256': manifest}, f, indent=0, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())


def verify_manifest(directory: str) -> bool:
  """Raises ``CorruptCheckpointError`` naming the first file that differs from the
  manifest; False (unverified) for a checkpoint written without one."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      want = json.load(f)['sha256']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CorruptCheckpointError(f'{path} is unreadable ({type(e).__name__})') from None
  for rel, digest in sorted(want.items()):
    full = os.path.join(directory, rel)
    if not os.path.isfile(full):
      raise CorruptCheckpointError(f'{full} is missing')
    if _sha256(full) != digest:
      raise CorruptCheckpointError(f'{full} does not match its checksum (damaged bytes)')
  return True

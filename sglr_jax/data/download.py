"""Fetching a file safely: a resumable HTTP download, its checksum, and an exclusive lock
that lets one process of many do the work while the others wait."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator, Optional

import tqdm

from sglr_jax import errors

_CHUNK = 1 << 20  # download read size
_CONNECT_TIMEOUT_S = 60.0


class DownloadFailed(Exception):
  """No (complete) answer from the server; ``cut`` when it stopped mid-file."""

  def __init__(self, reason: str, cut: bool = False):
    super().__init__(reason)
    self.cut = cut


def download(url: str, part: str, size: Optional[int], progress: bool) -> bool:
  """Downloads ``url`` into ``part``, resuming what it holds; True if it resumed."""
  have = os.path.getsize(part) if os.path.exists(part) else 0
  if size is not None and have >= size:
    if have == size:
      return True  # complete already: only the check is left
    have = 0
  headers = {'User-Agent': 'sglr_jax'}
  if have:
    headers['Range'] = f'bytes={have}-'
  try:
    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=_CONNECT_TIMEOUT_S)
  except urllib.error.HTTPError as e:
    if e.code == 416 and have:  # nothing after what we have: let the checksum judge it
      return True
    raise DownloadFailed(f'HTTP {e.code} {e.reason}') from e
  except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
    raise DownloadFailed(str(getattr(e, 'reason', e)) or type(e).__name__) from e
  with response:
    if have and response.status != 206:
      have = 0  # the server ignored the range: start over
    length = response.headers.get('Content-Length')
    total = have + int(length) if length and length.isdigit() else size
    bar = tqdm.tqdm(total=total, initial=have, unit='B', unit_scale=True, unit_divisor=1024,
                    desc=f'Downloading {url.rsplit("/", 1)[-1]}', disable=not progress)
    with open(part, 'ab' if have else 'wb') as f, bar:
      while True:
        try:
          chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as e:
          raise DownloadFailed(f'{type(e).__name__}: {e}', cut=True) from e
        if not chunk:
          break
        f.write(chunk)
        bar.update(len(chunk))
  got = os.path.getsize(part)
  if total is not None and got < total:
    raise DownloadFailed(f'the server closed the connection after {got} of {total} bytes',
                          cut=True)
  return have > 0


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(_CHUNK), b''):
      digest.update(block)
  return digest.hexdigest()


@contextlib.contextmanager
def exclusive(lock_path: str, what: str, timeout_s: float, progress: bool) -> Iterator[None]:
  """Holds an exclusive ``flock`` on ``lock_path``; waits for the holder up to ``timeout_s``."""
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o664)
  try:
    start, told = time.monotonic(), False
    while True:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        waited = time.monotonic() - start
        holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or '?'
        if waited >= timeout_s:
          raise errors.DatasetNotPreparedError(
              f'Timed out after {waited:.0f} s waiting for process {holder} to finish '
              f'preparing {what} (lock {lock_path}): let it finish, then run again.') from None
        if not told:
          print(f'Waiting for process {holder} to finish preparing {what} (lock '
                f'{lock_path}, at most {timeout_s:.0f} s)...', file=sys.stderr, flush=True)
          told = True
        time.sleep(min(0.2 + 0.1 * waited, 2.0))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock

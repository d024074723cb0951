"""The ensemble across processes (``jax.distributed``).

Every process runs the same host loop over all the points (each holds the whole test
set): each padded batch becomes one global array split over the devices of all
processes, so every device attacks its own rows, and each batch's outputs are gathered
back to every process. The robust set, and so the next batches, are then the same
everywhere, and every process ends with the result of a one-process run. Only process 0
writes files and prints warnings; a state file is read by process 0 and broadcast, so
hosts need not share a disk.
"""
from __future__ import annotations

import itertools
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from sglr_jax import distributed

BROADCAST_CHUNK = 1 << 26  # bytes per broadcast: bounds the device memory it takes
_barrier_ids = itertools.count()


def lead() -> bool:
  """Whether this process writes the files and prints (process 0)."""
  return jax.process_index() == 0


def sync():
  """All processes meet here after compiling (which can set them far apart), before the
  first collective (``distributed.sync_processes``)."""
  distributed.sync_processes(f'sglr_autoattack_{next(_barrier_ids)}')


def place(a: np.ndarray, sharding):
  """``a`` (the same on every process) as an array with ``sharding``; across processes
  each process copies only the rows of its own devices."""
  if sharding.is_fully_addressable:
    return jax.device_put(a, sharding)
  return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def to_numpy(a) -> np.ndarray:
  """A (possibly global) array as numpy, all of its rows on every process."""
  if isinstance(a, jax.Array) and not a.is_fully_addressable:
    return multihost_utils.process_allgather(a, tiled=True)
  return np.asarray(a)


def broadcast_bytes(data: Optional[bytes]) -> Optional[bytes]:
  """Process 0's ``data`` (None: nothing) on every process; the others pass anything."""
  if jax.process_count() == 1:
    return data
  src = lead()
  n = len(data) if src and data is not None else 0
  # [present, size // 2**30, size % 2**30]: int32 whether or not jax_enable_x64 is set
  head = np.asarray([int(src and data is not None), n >> 30, n & ((1 << 30) - 1)], np.int32)
  present, hi, lo = (int(v) for v in multihost_utils.broadcast_one_to_all(head))
  if not present:
    return None
  n = (hi << 30) | lo
  view = np.frombuffer(data, np.uint8) if src else None
  parts = []
  for start in range(0, n, BROADCAST_CHUNK):
    size = min(BROADCAST_CHUNK, n - start)
    chunk = view[start:start + size] if src else np.zeros(size, np.uint8)
    parts.append(np.asarray(multihost_utils.broadcast_one_to_all(chunk)).tobytes())
  return b''.join(parts)

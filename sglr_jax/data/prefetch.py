"""Host batches placed on the mesh ahead of the step that needs them.

``prefetch_to_mesh(batches, mesh, size)`` runs the host side of the input pipeline
(assembling the next host batch and transferring it to the devices, ``place``) in a
background thread, up to ``size`` batches ahead of the consumer, so that work overlaps
the device step instead of running between steps.

Look-ahead is bounded by counting, not by a queue's capacity: the thread may take
batch ``j`` (0-based) from ``batches`` only once the consumer has asked for more than
``j - size`` of them, so while the step runs on batch ``r``, at most batches ``r + 1``
to ``r + size`` are assembled or on the devices. An exception in
the thread (in ``batches`` or in ``place``) is raised in the consumer at the position of
the batch that failed; batches before it arrive first. Closing the generator (``close()``,
a ``with contextlib.closing(...)``, or its garbage collection after the consumer stops
early, e.g. on SIGTERM) stops the thread and joins it: no thread outlives the iteration.

Each process places its own host-local slices (``mesh.to_global``), so this works
unchanged under ``jax.distributed``.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, Optional

_END = object()


class _Failed:
  """The producer's exception, carried to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


def prefetch(items: Iterable, place: Callable, size: int = 2,
             name: str = 'prefetch') -> Iterator:
  """``place(item)`` for each of ``items``, computed in a thread up to ``size`` ahead."""
  if size < 1:
    raise ValueError(f'prefetch size must be at least 1, got {size}')
  ready: queue.Queue = queue.Queue()  # placed items, _END or _Failed
  slots = threading.Semaphore(size)  # look-ahead credit: one more per consumer request
  stop = threading.Event()

  def produce():
    try:
      it = iter(items)
      while True:
        slots.acquire()
        if stop.is_set():
          return
        try:
          item = next(it)
        except StopIteration:
          ready.put(_END)
          return
        ready.put(place(item))
    except BaseException as e:  # pylint: disable=broad-except  # re-raised in the consumer
      ready.put(_Failed(e))

  thread = threading.Thread(target=produce, name=name, daemon=True)
  started = False
  try:
    thread.start()
    started = True
    while True:
      slots.release()  # the batch asked for now, or one more ahead of it
      got = ready.get()
      if got is _END:
        return
      if isinstance(got, _Failed):
        raise got.error
      yield got
  finally:
    stop.set()
    slots.release()  # wakes a producer waiting for credit
    if started:
      thread.join()


def prefetch_to_mesh(batches: Iterable[dict], mesh, size: int = 2,
                     place: Optional[Callable] = None) -> Iterator[dict]:
  """Host-local batches -> global arrays on ``mesh`` (``mesh.to_global``), ``size`` ahead.

  ``place``: the placement (default ``sglr_jax.mesh.to_global(batch, mesh)``).
  """
  if place is None:
    from sglr_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top

    def place(batch):
      return mesh_lib.to_global(batch, mesh)

  return prefetch(batches, place, size, name='prefetch_to_mesh')

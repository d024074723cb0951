"""CIFAR-10/100 from a prepared tensorflow-datasets copy, read without TensorFlow.

``load_split`` reads a split through ``tfds.data_source`` (random-access
ArrayRecord files; no TensorFlow needed to read) and returns the whole split as
host numpy arrays: images uint8 ``[N, 32, 32, 3]``, labels int32 ``[N]``, in
the order of the prepared files (tfds shuffles once, deterministically, when it
writes them).

Why raw records: tfds's own per-example decoding (``source[i]`` -> dict of numpy)
is slow on the whole training set. We ask tfds for the raw records instead
(``DeserializeMethod.RAW_BYTES``), parse the ``tf.train.Example`` protos with
tfds's TF-free proto module and decode the PNGs with PIL straight into one
buffer: much faster, bit-identical pixels.

Preparing is not this module's job: ``data.load`` calls ``cifar_prepare.prepare``
first, which downloads and writes the copy without TensorFlow (or finds one written by
``tfds build NAME --file_format=array_record``). A copy this module cannot read raises
one ``errors.DatasetNotPreparedError`` saying why and how to fix it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from sglr_jax import errors

DATASETS = ('cifar10', 'cifar100')
IMAGE_SHAPE = (32, 32, 3)


def _data_dir_text(data_dir) -> str:
  if data_dir:
    return os.fspath(data_dir)
  return f'{tfds.core.constants.DATA_DIR} (tfds\'s default: data.data_dir is empty)'


class _QuietMissingVariant(logging.Filter):
  """Drops tfds's "Variant folder ... has no dataset_info.json" warning: our error says it."""

  def filter(self, record):
    return 'has no dataset_info.json' not in record.getMessage()


@contextlib.contextmanager
def _quiet_tfds():
  f = _QuietMissingVariant()
  logger = logging.getLogger('absl')
  logger.addFilter(f)
  try:
    yield
  finally:
    logger.removeFilter(f)


def _prepare_hint(name: str) -> str:
  return (
      'To fix: set data.data_dir to a tfds data dir holding a prepared copy '
      f'({name}/<version>/*.array_record-*), or prepare one with `python -m '
      f'sglr_jax.data.prepare {name} --data_dir=DIR` (on a machine with network access) '
      'and copy DIR here.')


def _diagnose(name: str, data_dir) -> Optional[str]:
  """Why ``name`` cannot be opened as a data source, or None if it looks prepared."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      return (f'Dataset {name!r} is not prepared in the data dir {_data_dir_text(data_dir)}: '
              f'it has no {name}/{builder.version}/dataset_info.json. ' + _prepare_hint(name))
    fmt = builder.info.file_format
  except Exception:  # pylint: disable=broad-except
    return None  # not a preparation problem: the caller re-raises tfds's own error
  if fmt is not None and fmt not in tfds.core.FileFormat.with_random_access():
    return (f'Dataset {name!r} under {_data_dir_text(data_dir)} is prepared as '
            f'{fmt.value}, which tfds.data_source cannot read (it needs array_record). '
            'Rebuild it with --file_format=array_record (or convert it with `tfds '
            'convert_format`). ' + _prepare_hint(name))
  return None


def open_source(name: str, split: str, data_dir=None):
  """``tfds.data_source`` of raw serialized records, or ``errors.DatasetNotPreparedError``.

  Never downloads (``cifar_prepare`` does).
  """
  if name not in DATASETS:
    raise errors.ConfigError(f'data.name={name!r} is not a tfds dataset this loader reads; '
                             f'allowed: {", ".join(DATASETS)}')
  with _quiet_tfds():
    try:
      return tfds.data_source(
          name, split=split, data_dir=data_dir, download=False,
          builder_kwargs={'file_format': tfds.core.FileFormat.ARRAY_RECORD},
          deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    except Exception:  # pylint: disable=broad-except
      problem = _diagnose(name, data_dir)
      if problem is None:
        raise
      raise errors.DatasetNotPreparedError(problem) from None  # one message, no tfds traceback


def _parse_example(record: bytes, label_key: str) -> Tuple[bytes, int]:
  """One serialized tfds CIFAR example -> (PNG bytes, label).

  The one place that knows how tfds lays out a record on disk (not an API: its
  ``Image`` feature stores an encoded PNG under ``'image'``, its ``ClassLabel`` an
  int64 under the feature's name). tests/test_tfds_cifar.py fails loudly if a
  tfds release changes this layout.
  """
  feature = tf_example_pb2.Example.FromString(record).features.feature
  return feature['image'].bytes_list.value[0], feature[label_key].int64_list.value[0]


def _decode_png(data: bytes, mode: str, size: Tuple[int, int]) -> bytes:
  with PIL.Image.open(io.BytesIO(data)) as im:
    if im.size != size:
      raise ValueError(f'image of size {im.size}, expected {size}')
    if im.mode != mode:
      im = im.convert(mode)
    return im.tobytes()


def decode_records(records: Sequence[bytes], image_shape=IMAGE_SHAPE,
                   label_key: str = 'label') -> Tuple[np.ndarray, np.ndarray]:
  """Serialized tfds examples -> (images uint8 [N, H, W, C], labels int32 [N])."""
  h, w, c = image_shape
  mode = {1: 'L', 3: 'RGB', 4: 'RGBA'}[c]
  pixels, labels = [], np.empty(len(records), np.int32)
  for i, record in enumerate(records):
    png, labels[i] = _parse_example(record, label_key)
    pixels.append(_decode_png(png, mode, (w, h)))
  images = np.frombuffer(bytearray(b''.join(pixels)), np.uint8)  # writable copy
  return images.reshape(len(records), h, w, c), labels


def load_split(name: str, split: str, data_dir=None) -> Tuple[np.ndarray, np.ndarray]:
  """Whole split in host memory: (images uint8 [N, 32, 32, 3], labels int32 [N]).

  ``name``: 'cifar10' or 'cifar100' (fine labels); ``split``: any tfds split
  spec ('train', 'test', 'train[:1000]'); ``data_dir``: a tfds data dir holding the
  dataset prepared as array_record (None: tfds's default). Raises
  ``errors.DatasetNotPreparedError`` when it is not there.
  """
  source = open_source(name, split, data_dir)
  n = len(source)
  records = source.__getitems__(list(range(n))) if n else []  # one batched read
  return decode_records(records, IMAGE_SHAPE)

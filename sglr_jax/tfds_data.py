"""CIFAR-10/100 from tensorflow-datasets, read without TensorFlow.

``load_split`` reads a split through ``tfds.data_source`` (random-access
ArrayRecord files; no TensorFlow needed to read) and returns the whole split as
host numpy arrays: images uint8 ``[N, 32, 32, 3]``, labels int32 ``[N]``, in
the order of the prepared files (tfds shuffles once, deterministically, when it
writes them).

Speed: tfds's own per-example decoding (``source[i]`` -> dict of numpy) takes
~25 s for the 50,000 training images on a busy 2-core machine. We ask tfds for
the raw records instead (``DeserializeMethod.RAW_BYTES``), parse the
``tf.train.Example`` protos with tfds's TF-free proto module and decode the
PNGs with PIL straight into one buffer: ~5 s, bit-identical pixels.

Preparing: tfds's CIFAR builder itself needs TensorFlow (and network access) to
*generate* the files, and ``tfds build`` writes TFRecord by default, which
``tfds.data_source`` cannot read. Prepare once, elsewhere, with
``tfds build cifar10 --data_dir=DIR --file_format=array_record`` and point
``data.data_dir`` at DIR. Anything else raises one ``DatasetNotPreparedError``
that says this; we never download (``download=False``).

Tests: ``tfds.testing.mock_data`` cannot serve this path without TensorFlow
(its fake serialized examples are PNG-encoded with TF, and its mocked
``__getitems__`` is unbound in tfds 4.9.10), so ``write_prepared`` writes a
real, tiny prepared dataset with tfds's own CIFAR builder and writer, only the
source-file reading replaced by the given arrays.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Mapping, Optional, Sequence, Tuple
from unittest import mock

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from tensorflow_datasets.core import decode as tfds_decode
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.proto import tf_example_pb2

DATASETS = ('cifar10', 'cifar100')
IMAGE_SHAPE = (32, 32, 3)


class DatasetNotPreparedError(ValueError):
  """The dataset is not prepared (in the ArrayRecord format) under the data dir."""


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
      'To fix: set the config field data.data_dir to a tfds data dir holding a prepared '
      f'copy ({name}/<version>/*.array_record-*), or prepare one on a machine with network '
      f'access and TensorFlow:\n    pip install tensorflow\n    tfds build {name} '
      f'--data_dir=DIR --file_format=array_record\nand copy DIR here (only reading is '
      'TensorFlow-free; this machine cannot download).')


def _diagnose(name: str, data_dir) -> Optional[str]:
  """Why ``name`` cannot be opened as a data source, or None if it looks prepared."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      return (f'Dataset {name!r} is not prepared in the data dir {_data_dir_text(data_dir)}: '
              f'it has no {name}/{builder.version}/dataset_info.json.\n' + _prepare_hint(name))
    fmt = builder.info.file_format
  except Exception:  # pylint: disable=broad-except
    return None  # not a preparation problem: the caller re-raises tfds's own error
  if fmt is not None and fmt not in file_adapters.FileFormat.with_random_access():
    return (f'Dataset {name!r} under {_data_dir_text(data_dir)} is prepared as '
            f'{fmt.value}, which tfds.data_source cannot read (it needs array_record). '
            'Rebuild it with --file_format=array_record (or convert it with `tfds '
            'convert_format`).\n' + _prepare_hint(name))
  return None


def open_source(name: str, split: str, data_dir=None, *, download: bool = False):
  """``tfds.data_source`` of raw serialized records, or ``DatasetNotPreparedError``.

  ``download=True`` lets tfds try to build the dataset (needs network and TensorFlow).
  """
  if name not in DATASETS:
    raise ValueError(f'data.name={name!r} is not a tfds dataset this loader reads; '
                     f'allowed: {", ".join(DATASETS)}')
  with _quiet_tfds():
    try:
      return tfds.data_source(
          name, split=split, data_dir=data_dir, download=download,
          builder_kwargs={'file_format': file_adapters.FileFormat.ARRAY_RECORD},
          deserialize_method=tfds_decode.DeserializeMethod.RAW_BYTES)
    except Exception:  # pylint: disable=broad-except
      problem = _diagnose(name, data_dir)
      if problem is None:
        raise
      raise DatasetNotPreparedError(problem) from None  # one message, no tfds traceback


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
    feature = tf_example_pb2.Example.FromString(record).features.feature
    pixels.append(_decode_png(feature['image'].bytes_list.value[0], mode, (w, h)))
    labels[i] = feature[label_key].int64_list.value[0]
  images = np.frombuffer(bytearray(b''.join(pixels)), np.uint8)  # writable copy
  return images.reshape(len(records), h, w, c), labels


def load_split(name: str, split: str, data_dir=None, *,
               download: bool = False) -> Tuple[np.ndarray, np.ndarray]:
  """Whole split in host memory: (images uint8 [N, 32, 32, 3], labels int32 [N]).

  ``name``: 'cifar10' or 'cifar100' (fine labels); ``split``: any tfds split
  spec ('train', 'test', 'train[:1000]'); ``data_dir``: a tfds data dir holding the
  dataset prepared as array_record (None: tfds's default). Raises
  ``DatasetNotPreparedError`` when it is not there.
  """
  source = open_source(name, split, data_dir, download=download)
  n = len(source)
  records = source.__getitems__(list(range(n))) if n else []
  return decode_records(records, IMAGE_SHAPE)


def write_prepared(name: str, data_dir, splits: Mapping[str, Tuple[np.ndarray, np.ndarray]]
                   ) -> str:
  """Writes a real tfds-prepared (array_record) ``name`` holding the given arrays.

  For tests and offline demos: tfds's own builder, DatasetInfo and writer produce
  the files (PNG-encoded with PIL, no TensorFlow, no network); only the reading
  of the original CIFAR archives is replaced by ``splits``: {split: (images
  uint8 [N, 32, 32, 3], labels [N])}. CIFAR-100's coarse label is written as
  label // 5 (not the real superclass map). The download manager is stubbed out
  too (building one needs ``importlib_resources``, absent from this venv, and
  there is nothing to download). Returns the dataset's version dir.
  """
  if name not in DATASETS:
    raise ValueError(f'name={name!r}; allowed: {", ".join(DATASETS)}')
  builder = tfds.builder(name, data_dir=data_dir,
                         file_format=file_adapters.FileFormat.ARRAY_RECORD)

  def split_generators(self, dl_manager):
    del self, dl_manager

    def generate(split, images, labels):
      for i, (image, label) in enumerate(zip(images, labels)):
        example = {'id': f'{split}_{i:05d}', 'image': PIL.Image.fromarray(image),
                   'label': int(label)}
        if name == 'cifar100':
          example['coarse_label'] = int(label) // 5
        yield i, example

    return {split: generate(split, np.asarray(x, np.uint8), np.asarray(y))
            for split, (x, y) in splits.items()}

  with mock.patch.object(type(builder), '_split_generators', split_generators), \
      mock.patch.object(tfds.core.DatasetBuilder, '_make_download_manager',
                        lambda self, **kwargs: mock.MagicMock()):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return os.fspath(builder.data_path)

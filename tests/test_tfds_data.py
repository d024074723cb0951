"""CIFAR through tfds.data_source without TensorFlow, on tiny datasets prepared by tfds.

Mock approach: ``tfds.testing.mock_data`` cannot serve ``load_split`` here (its fake
serialized records are PNG-encoded with TensorFlow, which is not installed, and its
mocked ``__getitems__`` is unbound in tfds 4.9.10). Instead ``tfds_data.write_prepared``
writes a real prepared dataset (tfds's CIFAR builder, DatasetInfo and ArrayRecord
writer) into a temp dir, and ``load_split`` reads it through the real tfds path.
Nothing here touches the network: a guard makes any socket connection fail the test.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

import numpy as np
import pytest

from sglr_jax import tfds_data


@pytest.fixture(autouse=True)
def no_network_and_no_tensorflow(monkeypatch):
  """Any connection attempt or TensorFlow import fails loudly."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError('network access attempted in a test')

  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)
  monkeypatch.setattr(sys, 'meta_path', [_BlockTensorFlow()] + sys.meta_path)
  yield attempts
  assert not attempts, attempts
  assert 'tensorflow' not in sys.modules


class _BlockTensorFlow:
  """Import hook: `import tensorflow` fails even where TensorFlow is installed.

  (A ``sys.modules['tensorflow'] = None`` entry would not do: tfds reads the mere
  presence of the key as "TensorFlow is loaded".)
  """

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    if fullname == 'tensorflow' or fullname.startswith('tensorflow.'):
      raise ImportError(f'{fullname} is blocked in this test: reading must not need it')
    return None


def _arrays(n, k, seed):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
          rng.integers(0, k, n).astype(np.int64))


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """cifar10 (train 40, test 12) and cifar100 (train 30) prepared by tfds in one data dir."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  c10 = {'train': _arrays(40, 10, 0), 'test': _arrays(12, 10, 1)}
  c100 = {'train': _arrays(30, 100, 2), 'test': _arrays(5, 100, 3)}
  tfds_data.write_prepared('cifar10', data_dir, c10)
  tfds_data.write_prepared('cifar100', data_dir, c100)
  return data_dir, {'cifar10': c10, 'cifar100': c100}


def _by_content(images, labels):
  """{image bytes: label}: tfds shuffles records at write time, so compare as sets."""
  out = {im.tobytes(): int(l) for im, l in zip(images, labels)}
  assert len(out) == len(images)  # random images are distinct
  return out


@pytest.mark.parametrize('name,split', [('cifar10', 'train'), ('cifar10', 'test'),
                                        ('cifar100', 'train')])
def test_load_split_round_trip(prepared, name, split):
  data_dir, data = prepared
  images, labels = tfds_data.load_split(name, split, data_dir)
  ref_images, ref_labels = data[name][split]
  assert images.shape == ref_images.shape and images.dtype == np.uint8
  assert labels.shape == ref_labels.shape and labels.dtype == np.int32
  assert _by_content(images, labels) == _by_content(ref_images, ref_labels)  # bit-exact pixels
  assert images.flags.writeable and images.flags.c_contiguous


def test_decoding_matches_tfds_own_decoder(prepared):
  """Our raw-record + PIL path equals tfds's per-example numpy decoding, in the same order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir, _ = prepared
  images, labels = tfds_data.load_split('cifar10', 'train', data_dir)
  source = tfds.data_source('cifar10', split='train', data_dir=data_dir,
                            builder_kwargs={'file_format': 'array_record'})
  assert len(source) == len(images)
  for i in range(len(source)):
    ex = source[i]
    np.testing.assert_array_equal(ex['image'], images[i])
    assert ex['label'] == labels[i]


def test_split_slicing(prepared):
  data_dir, _ = prepared
  full_x, full_y = tfds_data.load_split('cifar10', 'train', data_dir)
  part_x, part_y = tfds_data.load_split('cifar10', 'train[:10]', data_dir)
  np.testing.assert_array_equal(part_x, full_x[:10])
  np.testing.assert_array_equal(part_y, full_y[:10])


def test_not_prepared_raises_one_clear_error(tmp_path):
  start = time.monotonic()
  with pytest.raises(tfds_data.DatasetNotPreparedError) as e:
    tfds_data.load_split('cifar10', 'train', str(tmp_path))
  assert time.monotonic() - start < 10  # no download attempt, no retries
  assert isinstance(e.value, ValueError)
  msg = str(e.value)
  for part in (str(tmp_path), 'data.data_dir', 'tfds build cifar10',
               '--file_format=array_record', 'network'):
    assert part in msg, (part, msg)
  # Raised `from None`: no chained tfds traceback is printed above ours.
  assert e.value.__cause__ is None and e.value.__suppress_context__
  assert os.listdir(tmp_path) == []  # nothing half-written


def test_not_prepared_in_missing_dir(tmp_path):
  missing = tmp_path / 'nope'
  with pytest.raises(tfds_data.DatasetNotPreparedError, match='tfds build cifar100'):
    tfds_data.load_split('cifar100', 'test', str(missing))
  assert not missing.exists()


def test_tfrecord_prepared_dataset_is_explained(tmp_path):
  """A dir prepared in the default TFRecord format (unreadable by data_source) is named so."""
  version_dir = tfds_data.write_prepared('cifar10', str(tmp_path), {'train': _arrays(3, 10, 4)})
  info_path = os.path.join(version_dir, 'dataset_info.json')
  with open(info_path) as f:
    info = json.load(f)
  info['fileFormat'] = 'tfrecord'
  with open(info_path, 'w') as f:
    json.dump(info, f)
  for fname in os.listdir(version_dir):
    if '.array_record-' in fname:
      os.rename(os.path.join(version_dir, fname),
                os.path.join(version_dir, fname.replace('array_record', 'tfrecord')))
  with pytest.raises(tfds_data.DatasetNotPreparedError, match='prepared as tfrecord'):
    tfds_data.load_split('cifar10', 'train', str(tmp_path))


def test_other_errors_are_not_disguised(prepared):
  data_dir, _ = prepared
  with pytest.raises(ValueError, match='validation') as e:
    tfds_data.load_split('cifar10', 'validation', data_dir)  # CIFAR has no such split
  assert not isinstance(e.value, tfds_data.DatasetNotPreparedError)
  with pytest.raises(ValueError, match='cifar10, cifar100'):
    tfds_data.load_split('imagenet2012', 'train', data_dir)

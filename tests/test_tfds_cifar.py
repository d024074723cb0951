"""CIFAR through tfds.data_source without TensorFlow, on tiny datasets prepared by tfds.

Mock approach: ``tfds.testing.mock_data`` cannot serve ``load_split`` here (its fake
serialized records are PNG-encoded with TensorFlow, which is not installed, and its
mocked ``__getitems__`` is unbound in tfds 4.9.10). Instead the test fixture
``fixtures.tfds_prepared.write_prepared`` writes a real prepared dataset (tfds's CIFAR
builder, DatasetInfo and ArrayRecord writer) into a temp dir, and ``load_split`` reads
it through the real tfds path.
Nothing here touches the network: a guard makes any socket connection fail the test.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys

import numpy as np
import pytest

from fixtures.tfds_prepared import write_prepared
from sglr_jax import data, errors
from sglr_jax.data import noise, tfds_cifar


@pytest.fixture(autouse=True)
def no_network_and_no_tensorflow(monkeypatch):
  """Any connection attempt fails loudly; TensorFlow must not be installed or loaded."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError('network access attempted in a test')

  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)
  # TensorFlow is not part of the locks: reading must work without it.
  assert importlib.util.find_spec('tensorflow') is None, 'TensorFlow is installed in the test env'
  yield attempts
  assert not attempts, attempts
  assert 'tensorflow' not in sys.modules


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
  write_prepared('cifar10', data_dir, c10)
  write_prepared('cifar100', data_dir, c100)
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
  images, labels = tfds_cifar.load_split(name, split, data_dir)
  ref_images, ref_labels = data[name][split]
  assert images.shape == ref_images.shape and images.dtype == np.uint8
  assert labels.shape == ref_labels.shape and labels.dtype == np.int32
  assert _by_content(images, labels) == _by_content(ref_images, ref_labels)  # bit-exact pixels
  assert images.flags.writeable and images.flags.c_contiguous


def test_decoding_matches_tfds_own_decoder(prepared):
  """Our raw-record + PIL path equals tfds's per-example numpy decoding, in the same order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir, _ = prepared
  images, labels = tfds_cifar.load_split('cifar10', 'train', data_dir)
  source = tfds.data_source('cifar10', split='train', data_dir=data_dir,
                            builder_kwargs={'file_format': 'array_record'})
  assert len(source) == len(images)
  for i in range(len(source)):
    ex = source[i]
    np.testing.assert_array_equal(ex['image'], images[i])
    assert ex['label'] == labels[i]


def test_split_slicing(prepared):
  data_dir, _ = prepared
  full_x, full_y = tfds_cifar.load_split('cifar10', 'train', data_dir)
  part_x, part_y = tfds_cifar.load_split('cifar10', 'train[:10]', data_dir)
  np.testing.assert_array_equal(part_x, full_x[:10])
  np.testing.assert_array_equal(part_y, full_y[:10])


def test_not_prepared_raises_one_clear_error(tmp_path):
  # No download attempt: the autouse guard fails the test on any connection.
  with pytest.raises(errors.DatasetNotPreparedError) as e:
    tfds_cifar.load_split('cifar10', 'train', str(tmp_path))
  assert isinstance(e.value, ValueError)
  assert isinstance(e.value, errors.UserError)  # the command line prints it as one message
  msg = str(e.value)
  for part in (str(tmp_path), 'data.data_dir', 'python -m sglr_jax.data.prepare cifar10',
               'network'):
    assert part in msg, (part, msg)
  assert '\n' not in msg  # one line
  # Raised `from None`: no chained tfds traceback is printed above ours.
  assert e.value.__cause__ is None and e.value.__suppress_context__
  assert os.listdir(tmp_path) == []  # nothing half-written


def test_not_prepared_in_missing_dir(tmp_path):
  missing = tmp_path / 'nope'
  with pytest.raises(errors.DatasetNotPreparedError, match='sglr_jax.data.prepare cifar100'):
    tfds_cifar.load_split('cifar100', 'test', str(missing))
  assert not missing.exists()


def test_tfrecord_prepared_dataset_is_explained(tmp_path):
  """A dir prepared in the default TFRecord format (unreadable by data_source) is named so."""
  version_dir = write_prepared('cifar10', str(tmp_path), {'train': _arrays(3, 10, 4)})
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
  with pytest.raises(errors.DatasetNotPreparedError, match='prepared as tfrecord'):
    tfds_cifar.load_split('cifar10', 'train', str(tmp_path))


def test_other_errors_are_not_disguised(prepared):
  data_dir, _ = prepared
  with pytest.raises(ValueError, match='validation') as e:
    tfds_cifar.load_split('cifar10', 'validation', data_dir)  # CIFAR has no such split
  assert not isinstance(e.value, errors.DatasetNotPreparedError)
  with pytest.raises(ValueError, match='cifar10, cifar100') as e:
    tfds_cifar.load_split('imagenet2012', 'train', data_dir)
  assert isinstance(e.value, errors.ConfigError) and 'data.name' in str(e.value)


def test_record_layout_is_what_the_parser_expects(prepared):
  """tfds's on-disk record layout is not an API: a tfds release that changes it fails here."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  data_dir, _ = prepared
  source = tfds_cifar.open_source('cifar10', 'test', data_dir)
  record = source.__getitems__([0])[0]
  assert isinstance(record, bytes), ('tfds no longer returns raw bytes for RAW_BYTES: '
                                     f'got {type(record)}; update tfds_cifar')
  feature = tf_example_pb2.Example.FromString(record).features.feature
  assert set(feature) == {'id', 'image', 'label'}, (
      f'tfds changed the CIFAR record layout to {sorted(feature)}: update '
      'tfds_cifar._parse_example')
  png, label = tfds_cifar._parse_example(record, 'label')  # pylint: disable=protected-access
  assert png[:8] == b'\x89PNG\r\n\x1a\n', 'the image feature is no longer stored as PNG'
  assert label == feature['label'].int64_list.value[0] and 0 <= label < 10


@pytest.mark.parametrize('name,k', [('cifar10', 10), ('cifar100', 100)])
def test_data_load_reads_cifar_and_applies_noise(prepared, name, k):
  data_dir, _ = prepared
  params = data.DataParams(name=name, data_dir=data_dir, train_size=25, test_size=4,
                           noise_kind='asymmetric', noise_rate=0.5, noise_seed=2)
  ds = data.load(params)
  x, y = tfds_cifar.load_split(name, 'train', data_dir)
  xt, yt = tfds_cifar.load_split(name, 'test', data_dir)
  assert (ds.name, ds.num_classes, ds.image_shape) == (name, k, (32, 32, 3))
  np.testing.assert_array_equal(ds.train_images, x[:25])
  np.testing.assert_array_equal(ds.train_clean_labels, y[:25])
  np.testing.assert_array_equal(ds.test_images, xt[:4])
  np.testing.assert_array_equal(ds.test_labels, yt[:4])
  expected = noise.asymmetric_noise(y[:25], 0.5, 2, num_classes=k)
  np.testing.assert_array_equal(ds.train_labels, expected)
  assert ds.noisy.any()


def test_data_load_of_unprepared_cifar_is_a_user_error(tmp_path, monkeypatch):
  # data.load prepares on first use; a download source that does not exist (a file URL:
  # no socket) ends in one user error naming the source and the data dir.
  missing = f'file://{tmp_path}/nowhere/cifar-100-binary.tar.gz'
  monkeypatch.setenv('SGLR_JAX_CIFAR100_URL', missing)
  with pytest.raises(errors.DatasetNotPreparedError) as e:
    data.load(data.DataParams(name='cifar100', data_dir=str(tmp_path / 'data')))
  assert missing in str(e.value) and str(tmp_path / 'data') in str(e.value)
  assert '\n' not in str(e.value)

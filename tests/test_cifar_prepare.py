"""cifar_prepare: CIFAR from a local test server, written as tfds + TensorFlow write it.

No network: each test starts an HTTP server on 127.0.0.1 serving small archives in the
exact CIFAR-10/100 binary layouts (real member names, a few records per file), and the
real code path runs with only the URL and the checksum overridden.

The golden hashes below come from tfds 4.9.10's own ``download_and_prepare`` of these
archives WITH TensorFlow 2.21 (its CIFAR builder, the URL pointed at such a server):
the records are compared as parsed protos (tfds's serialized field order varies from
process to process, with or without TensorFlow), the metadata files byte for byte.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from sglr_jax import errors
from sglr_jax.data import cifar_prepare
from sglr_jax.data import tfds_cifar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- test archives (tests/test_cifar_prepare.py:ARCHIVE_START..ARCHIVE_END) ---
# ARCHIVE_START
CIFAR10_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                 'ship', 'truck')


def _images(seed: str, n: int) -> np.ndarray:
  """n deterministic uint8 images [n, 32, 32, 3]: noise, gradients and flat ones alike."""
  noise = np.frombuffer(hashlib.shake_256(seed.encode()).digest(n * 3072), np.uint8)
  noise = noise.reshape(n, 32, 32, 3)
  yy, xx = np.mgrid[0:32, 0:32]
  images = noise.copy()
  for i in range(n):
    if i % 3 == 1:  # smooth: a gradient with a little noise
      images[i] = (yy[..., None] * (3 + i) + xx[..., None] * 5 + np.arange(3) * 40
                   + noise[i] // 64) % 256
    elif i % 3 == 2:  # flat blocks
      images[i] = (noise[i, :1, :1] // 16 * 16) * ((yy // 8 + xx // 8) % 2)[..., None]
  return images


def _records(images, *labels) -> bytes:
  """The binary CIFAR layout: label byte(s), then the image channel-major (CHW)."""
  chw = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
  cols = [np.asarray(label, np.uint8)[:, None] for label in labels]
  return np.concatenate(cols + [chw], 1).tobytes()


def make_archive(name: str):
  """(.tar.gz bytes, {split: (images, labels, coarse labels or None)}) for ``name``."""
  members, splits = [], {}
  if name == 'cifar10':
    prefix = 'cifar-10-batches-bin/'
    members.append((prefix + 'batches.meta.txt', ('\n'.join(CIFAR10_NAMES) + '\n\n').encode()))
    train = []
    for k in range(1, 6):
      x = _images(f'cifar10-train-{k}', 3)
      y = (np.arange(3) * 7 + k) % 10
      members.append((prefix + f'data_batch_{k}.bin', _records(x, y)))
      train.append((x, y))
    splits['train'] = (np.concatenate([t[0] for t in train]),
                       np.concatenate([t[1] for t in train]), None)
    x = _images('cifar10-test', 4)
    y = (np.arange(4) * 3 + 1) % 10
    members.append((prefix + 'test_batch.bin', _records(x, y)))
    splits['test'] = (x, y, None)
  else:
    prefix = 'cifar-100-binary/'
    members.append((prefix + 'coarse_label_names.txt',
                    ''.join(f'superclass_{i}\n' for i in range(20)).encode()))
    members.append((prefix + 'fine_label_names.txt',
                    ''.join(f'class_{i}\n' for i in range(100)).encode()))
    for split, n in (('train', 12), ('test', 5)):
      x = _images(f'cifar100-{split}', n)
      fine = (np.arange(n) * 37 + 11) % 100
      coarse = fine // 5
      members.append((prefix + f'{split}.bin', _records(x, coarse, fine)))
      splits[split] = (x, fine, coarse)
  buf = io.BytesIO()
  with gzip.GzipFile(fileobj=buf, mode='wb', mtime=0) as gz:
    with tarfile.open(fileobj=gz, mode='w', format=tarfile.USTAR_FORMAT) as tar:
      for member, data in members:
        info = tarfile.TarInfo(member)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
  return buf.getvalue(), splits
# ARCHIVE_END


# tfds 4.9.10 + TensorFlow 2.21 ``download_and_prepare(file_format='array_record')`` of
# make_archive(name): sha256 of each split's records (parsed, re-serialized
# deterministically, in file order) and of each metadata file (dataset_info.json without
# its downloadSize, which is the archive's length), as _fingerprint computes them. To
# redo: in a venv with tensorflow-cpu, tensorflow-datasets and array_record, serve
# make_archive(name) on 127.0.0.1, point the tfds builder's ``_cifar_info.url`` at it,
# run ``tfds.builder(name, file_format='array_record').download_and_prepare()`` and
# hash the version dir as _fingerprint does.
GOLDEN = {
    'cifar10': {
        'cifar10-test.array_record-00000-of-00001':
            'ae3207bd426154951df534c1cad9be308a41841e81b297766b12ed537e4c0c90',
        'cifar10-train.array_record-00000-of-00001':
            '2d784c684891fb8cdac77c3d0fba0cea082408539ede0d3d938720cd201e3fe6',
        'dataset_info.json':
            'c3f111e0fe6df0ac407d6917f4b05f5415623d5f1d830265c7fdfabd510b8fb9',
        'features.json':
            'fc6f1ce5a0c3dd696ac48a5f6c62b589f78f42c42a8f848eb4a9e110650da063',
        'label.labels.txt':
            '2ce042b1e0b48db4bb214408e6414ba18b2731c24af244f2d6c112fddf31af00',
    },
    'cifar100': {
        'cifar100-test.array_record-00000-of-00001':
            '7ba8372696363b514b65f6a1089990c3ae0e107f441813dde93c3f9fedde1ed7',
        'cifar100-train.array_record-00000-of-00001':
            'c34622ffd7cf4e141ae619649036e2836ad71777b5629111253a452268eef120',
        'coarse_label.labels.txt':
            'eac7d1796017fc062d00aabe88ce653f22c5bf90108ea4832fd8e1a490f7a78e',
        'dataset_info.json':
            '5e42670adc37cb928def0cc22930069b8e3d44b07921e32216b40d5d8d101677',
        'features.json':
            'f7a32d5d1790d29d2c6d0efd530ef106b894d20809b805561788034c03740b36',
        'label.labels.txt':
            'bbfec98d8dc5bcf37600c44fd3729654dbfcd01f12febe0fa18e1f4a53ad3022',
    },
}


class _Server:
  """An HTTP server on 127.0.0.1 for one test: serves bytes by path, honours Range.

  ``cut``: the next that many archive responses stop half-way (the connection closes
  before Content-Length bytes). ``hold``: archive responses wait until it is set.
  ``ranges``: False answers every request with the whole file (as many servers do).
  """

  def __init__(self):
    self.files, self.requests = {}, []
    self.cut = 0
    self.ranges = True
    self.hold = threading.Event()
    self.hold.set()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):
        del args

      def do_GET(self):  # pylint: disable=invalid-name
        server.requests.append((self.path, self.headers.get('Range')))
        data = server.files.get(self.path)
        if data is None:
          self.send_error(404)
          return
        server.hold.wait(60)
        start = 0
        m = re.fullmatch(r'bytes=(\d+)-', self.headers.get('Range') or '')
        if m and server.ranges and int(m.group(1)) < len(data):
          start = int(m.group(1))
          self.send_response(206)
          self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        else:
          self.send_response(200)
        body = data[start:]
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if server.cut:
          server.cut -= 1
          self.wfile.write(body[:len(body) // 2])
          self.wfile.flush()
          self.connection.shutdown(socket.SHUT_RDWR)
          return
        self.wfile.write(body)

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.httpd.daemon_threads = True
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                   daemon=True)
    self.thread.start()

  def add(self, name: str, data: bytes):
    """Serves ``data`` as ``name``'s archive; returns (url, sha256)."""
    path = '/' + cifar_prepare.ARCHIVES[name].filename
    self.files[path] = data
    return f'http://127.0.0.1:{self.httpd.server_address[1]}{path}', _sha(data)

  def archive_gets(self):
    return [r for r in self.requests if r[0] in self.files]

  def close(self):
    self.hold.set()
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join(10)


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=None)
def _archive(name):
  return make_archive(name)


@pytest.fixture
def server():
  s = _Server()
  yield s
  s.close()


def _version(name):
  return str(tfds.builder_cls(name).VERSION)


def _one_line(e):
  message = str(e)
  assert '\n' not in message, message
  return message


def _fingerprint(path):
  """GOLDEN's hashes of a prepared version dir."""
  out = {}
  for f in sorted(os.listdir(path)):
    with open(os.path.join(path, f), 'rb') as fh:
      data = fh.read()
    if '.array_record-' in f:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      reader = array_record_module.ArrayRecordReader(os.path.join(path, f))
      records = reader.read_all()
      reader.close()
      data = b''.join(
          tf_example_pb2.Example.FromString(r).SerializeToString(deterministic=True)
          for r in records)
    elif f == 'dataset_info.json':
      info = json.loads(data)
      info.pop('downloadSize', None)
      data = json.dumps(info, sort_keys=True).encode()
    out[f] = _sha(data)
  return out


def _expected_in_file_order(name, split, data_dir):
  """The test archive's split in the order of the prepared files, via tfds.data_source."""
  images, labels, coarse = _archive(name)[1][split]
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  examples = [source[i] for i in range(len(source))]
  order = [int(e['id'].decode().split('_')[1]) for e in examples]
  assert sorted(order) == list(range(len(images)))
  for e, i in zip(examples, order):  # tfds's own decoding (PIL) of what was written
    np.testing.assert_array_equal(e['image'], images[i])
    assert e['label'] == labels[i]
    if coarse is not None:
      assert e['coarse_label'] == coarse[i]
  return images[order], labels[order]


def test_archives_are_those_tfds_registers(tmp_path):
  """URL, size, sha256 and layout: tfds's own (fails loudly if a tfds release changes them)."""
  for name, archive in cifar_prepare.ARCHIVES.items():
    checksums = os.path.join(os.path.dirname(tfds.__file__), 'url_checksums', f'{name}.txt')
    infos = tfds.download.checksums.load_url_infos(checksums)
    assert set(infos) == {archive.url}, infos
    assert infos[archive.url].size == archive.size
    assert infos[archive.url].checksum == archive.sha256
    builder = tfds.builder(name, data_dir=str(tmp_path))
    info = builder._cifar_info  # pylint: disable=protected-access
    assert info.url == archive.url
    assert info.prefix == archive.prefix
    assert tuple(info.train_files) == archive.train_files
    assert tuple(info.test_files) == archive.test_files
    assert tuple(info.label_files) == archive.label_files
    assert tuple(info.label_keys) == archive.label_keys


@pytest.mark.parametrize('name', cifar_prepare.DATASETS)
def test_prepare_writes_what_tfds_writes(server, tmp_path, name):
  data, splits = _archive(name)
  url, sha = server.add(name, data)
  data_dir = str(tmp_path / 'data')
  path = cifar_prepare.prepare(name, data_dir, url=url, sha256=sha, progress=False)
  assert path == os.path.join(data_dir, name, _version(name))
  # What the project reads: bit-identical pixels and labels.
  for split in ('train', 'test'):
    images, labels = tfds_cifar.load_split(name, split, data_dir)
    want_images, want_labels = _expected_in_file_order(name, split, data_dir)
    assert len(images) == len(splits[split][0])
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
  # What tfds + TensorFlow write for the same archive.
  info = json.loads(open(os.path.join(path, 'dataset_info.json'), encoding='utf-8').read())
  assert info['moduleName'] == 'tensorflow_datasets.image_classification.cifar'
  assert info['fileFormat'] == 'array_record'
  assert int(info['downloadSize']) == len(data)
  assert _fingerprint(path) == GOLDEN[name]
  # Nothing else left behind; a second call finds it without downloading.
  assert sorted(os.listdir(data_dir)) == sorted([f'.{name}.prepare.lock', name])
  gets = len(server.archive_gets())
  assert cifar_prepare.prepare(name, data_dir, url=url, sha256=sha, progress=False) == path
  assert len(server.archive_gets()) == gets == 1


def test_wrong_checksum_prepares_nothing(server, tmp_path):
  url, _ = server.add('cifar10', _archive('cifar10')[0])
  data_dir = str(tmp_path)
  with pytest.raises(errors.DatasetNotPreparedError) as e:
    cifar_prepare.prepare('cifar10', data_dir, url=url, sha256='0' * 64, progress=False)
  message = _one_line(e.value)
  assert 'sha256' in message and url in message and '0' * 64 in message
  assert os.listdir(data_dir) == ['.cifar10.prepare.lock']
  with pytest.raises(errors.DatasetNotPreparedError):
    tfds_cifar.load_split('cifar10', 'test', data_dir)


def test_cut_download_leaves_no_dataset_and_resumes(server, tmp_path):
  data = _archive('cifar100')[0]
  url, sha = server.add('cifar100', data)
  data_dir = str(tmp_path)
  server.cut = 1
  with pytest.raises(errors.DatasetNotPreparedError) as e:
    cifar_prepare.prepare('cifar100', data_dir, url=url, sha256=sha, progress=False)
  assert 'run again' in _one_line(e.value)
  assert cifar_prepare.prepared_dir('cifar100', data_dir) is None
  with pytest.raises(errors.DatasetNotPreparedError):
    tfds_cifar.load_split('cifar100', 'test', data_dir)
  assert 'cifar100' not in os.listdir(data_dir)
  cifar_prepare.prepare('cifar100', data_dir, url=url, sha256=sha, progress=False)
  (_, first), (_, second) = server.archive_gets()
  assert first is None and second == f'bytes={len(data) // 2}-'  # resumed
  images, labels = tfds_cifar.load_split('cifar100', 'test', data_dir)
  want_images, want_labels = _expected_in_file_order('cifar100', 'test', data_dir)
  np.testing.assert_array_equal(images, want_images)
  np.testing.assert_array_equal(labels, want_labels)


def test_cut_download_restarts_where_ranges_are_not_served(server, tmp_path):
  url, sha = server.add('cifar10', _archive('cifar10')[0])
  server.cut, server.ranges = 1, False
  with pytest.raises(errors.DatasetNotPreparedError):
    cifar_prepare.prepare('cifar10', str(tmp_path), url=url, sha256=sha, progress=False)
  cifar_prepare.prepare('cifar10', str(tmp_path), url=url, sha256=sha, progress=False)
  assert [r[1] is not None for r in server.archive_gets()] == [False, True]
  images, _ = tfds_cifar.load_split('cifar10', 'test', str(tmp_path))
  assert images.shape == (4, 32, 32, 3)


def test_bad_partial_download_is_fetched_again(server, tmp_path):
  data = _archive('cifar10')[0]
  url, sha = server.add('cifar10', data)
  # A .part left by an earlier run (its name: the archive's and the expected sha256's).
  part = tmp_path / f'.cifar-10-binary.tar.gz.{sha[:16]}.part'
  part.write_bytes(b'x' * (len(data) // 2))
  cifar_prepare.prepare('cifar10', str(tmp_path), url=url, sha256=sha, progress=False)
  assert [r[1] for r in server.archive_gets()] == [f'bytes={len(data) // 2}-', None]
  assert sorted(os.listdir(tmp_path)) == ['.cifar10.prepare.lock', 'cifar10']


def test_lock_wait_times_out_with_one_line(server, tmp_path):
  import fcntl  # pylint: disable=g-import-not-at-top
  url, sha = server.add('cifar10', _archive('cifar10')[0])
  with open(tmp_path / '.cifar10.prepare.lock', 'w', encoding='utf-8') as lock:
    lock.write('4242\n')
    lock.flush()
    fcntl.flock(lock, fcntl.LOCK_EX)  # another process preparing (an open file description)
    start = time.monotonic()
    with pytest.raises(errors.DatasetNotPreparedError) as e:
      cifar_prepare.prepare('cifar10', str(tmp_path), url=url, sha256=sha, progress=False,
                            lock_timeout_s=0.5)
    assert time.monotonic() - start < 5
  message = _one_line(e.value)
  assert 'Timed out' in message and 'process 4242' in message and 'cifar10' in message
  assert not server.archive_gets()


def test_interrupted_preparation_leaves_no_dataset(server, tmp_path, monkeypatch):
  url, sha = server.add('cifar10', _archive('cifar10')[0])
  data_dir = str(tmp_path)
  stale = tmp_path / '.cifar10.prepare-stale' / 'cifar10' / _version('cifar10')
  stale.mkdir(parents=True)  # what a killed run leaves
  (stale / 'dataset_info.json').write_text('{}')

  def interrupt(images):
    raise KeyboardInterrupt

  monkeypatch.setattr(cifar_prepare, 'encode_png', interrupt)
  with pytest.raises(KeyboardInterrupt):
    cifar_prepare.prepare('cifar10', data_dir, url=url, sha256=sha, progress=False)
  assert cifar_prepare.prepared_dir('cifar10', data_dir) is None
  assert 'cifar10' not in os.listdir(data_dir)
  assert not [f for f in os.listdir(data_dir) if f.startswith('.cifar10.prepare-')
              and f != '.cifar10.prepare-stale']
  monkeypatch.undo()
  path = cifar_prepare.prepare('cifar10', data_dir, url=url, sha256=sha, progress=False)
  assert len(server.archive_gets()) == 1  # the verified download was kept
  assert sorted(os.listdir(data_dir)) == ['.cifar10.prepare.lock', 'cifar10']
  assert os.listdir(os.path.dirname(path)) == [_version('cifar10')]


def test_not_an_archive_is_named(server, tmp_path):
  data = _archive('cifar10')[0][:-300]  # truncated .tar.gz, served with its own checksum
  url, sha = server.add('cifar10', data)
  with pytest.raises(errors.DatasetNotPreparedError) as e:
    cifar_prepare.prepare('cifar10', str(tmp_path), url=url, sha256=sha, progress=False)
  assert 'not the CIFAR binary archive' in _one_line(e.value)
  assert os.listdir(tmp_path) == ['.cifar10.prepare.lock']


def test_two_processes_prepare_one_dataset(server, tmp_path):
  url, sha = server.add('cifar10', _archive('cifar10')[0])
  data_dir = str(tmp_path)
  env = dict(os.environ, SGLR_JAX_CIFAR10_URL=url, SGLR_JAX_CIFAR10_SHA256=sha)
  server.hold.clear()  # the first download waits until the other process waits for it
  cmd = [sys.executable, '-m', 'sglr_jax.data.prepare', 'cifar10', f'--data_dir={data_dir}',
         '--no_progress']
  procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  waiting = threading.Event()
  errs = [[], []]

  def read(i):
    for line in procs[i].stderr:
      errs[i].append(line)
      if 'Waiting for process' in line:
        waiting.set()

  readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(2)]
  for r in readers:
    r.start()
  try:
    assert waiting.wait(120), errs
  finally:
    server.hold.set()
  outs = [p.communicate(timeout=120)[0] for p in procs]
  for r in readers:
    r.join(10)
  assert [p.returncode for p in procs] == [0, 0], errs
  path = os.path.join(data_dir, 'cifar10', _version('cifar10'))
  assert [o.strip() for o in outs] == [path, path]
  assert len(server.archive_gets()) == 1
  assert sum('Waiting for process' in ''.join(e) for e in errs) == 1
  assert sorted(os.listdir(data_dir)) == ['.cifar10.prepare.lock', 'cifar10']
  images, labels = tfds_cifar.load_split('cifar10', 'train', data_dir)
  assert images.shape == (15, 32, 32, 3) and labels.shape == (15,)


def _closed_port_url(name):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return f'http://127.0.0.1:{port}/{cifar_prepare.ARCHIVES[name].filename}'


def test_no_server_is_one_line(tmp_path):
  url = _closed_port_url('cifar100')
  with pytest.raises(errors.DatasetNotPreparedError) as e:
    cifar_prepare.prepare('cifar100', str(tmp_path), url=url, sha256='1' * 64, progress=False)
  message = _one_line(e.value)
  assert message.startswith(f'Could not download cifar100 from {url}')
  assert 'python -m sglr_jax.data.prepare cifar100 --data_dir=DIR' in message
  assert 'copy DIR/cifar100' in message
  assert 'cifar100' not in os.listdir(tmp_path)
  # The command line: the same line, exit status 2.
  run = subprocess.run(
      [sys.executable, '-m', 'sglr_jax.data.prepare', 'cifar100', f'--data_dir={tmp_path}',
       f'--url={url}', '--sha256=' + '1' * 64], cwd=ROOT, capture_output=True, text=True,
      timeout=120, check=False)
  assert run.returncode == 2, run.stderr
  assert run.stderr.splitlines() == [f'error: {message}']
  usage = subprocess.run([sys.executable, '-m', 'sglr_jax.data.prepare', 'mnist'], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
  assert usage.returncode == 2 and len(usage.stderr.splitlines()) == 1, usage.stderr


def test_tfrecord_copy_is_named(server, tmp_path):
  url, sha = server.add('cifar10', _archive('cifar10')[0])
  data_dir = str(tmp_path)
  path = cifar_prepare.prepare('cifar10', data_dir, url=url, sha256=sha, progress=False)
  info_path = os.path.join(path, 'dataset_info.json')
  info = json.loads(open(info_path, encoding='utf-8').read())
  del info['fileFormat']  # as `tfds build` without --file_format writes it: TFRecord
  with open(info_path, 'w', encoding='utf-8') as f:
    json.dump(info, f)
  with pytest.raises(errors.DatasetNotPreparedError) as e:
    cifar_prepare.prepare('cifar10', data_dir, url=url, sha256=sha, progress=False)
  message = _one_line(e.value)
  assert path in message and 'tfrecord' in message and 'move it away' in message
  assert len(server.archive_gets()) == 1


# sha256 of tf.io.encode_png (TensorFlow 2.21) of _png_cases()'s images, one per shape.
PNG_GOLDEN = {
    '(1, 1, 3)':
        '9ea04cb2a578a550683a64f39b553067853b47de6c0d1c9c01e93c0b90961b9a',
    '(1, 9, 3)':
        'cc946888fc955a1db9e52b2c6af90d65eb6be19cd9de08e57a440c5db66c4a8f',
    '(9, 1, 3)':
        'de8398e5bafdfa9356c0277a7b6492a99bac7c9cdd810ad3f3203ab8e7d4b090',
    '(7, 5, 3)':
        'bc55aa1028b54486f9e3691d2652bf96806a3b0672a30c4a757d915a9e04183e',
    '(32, 32, 1)':
        '92c459f7d60eb836a0acd758d6370e7dbdc367c827bf5663835e2022d067e5ae',
    '(32, 32, 3)':
        '9f102c4c6ec4ea6efd0b7065c7e49558f850c673e4b372edef993ea617327867',
    '(64, 64, 4)':
        'de4a479a449bfadd71ce429075a14b95640d1df230447baa374b3754c931b08f',
    '(128, 128, 3)':
        'd525accacb7aa9731ecfc042272c9b3c379604370e72d038c28ea6dd875718ab',
}


def _png_cases():
  shapes = [(1, 1, 3), (1, 9, 3), (9, 1, 3), (7, 5, 3), (32, 32, 1), (32, 32, 3), (64, 64, 4),
            (128, 128, 3)]
  for shape in shapes:
    n = int(np.prod(shape))
    noise = np.frombuffer(hashlib.shake_256(str(shape).encode()).digest(2 * n), np.uint8)
    smooth = (np.arange(n) // 7 + noise[n:] // 64).astype(np.uint8)
    yield shape, np.stack([noise[:n].reshape(shape), smooth.reshape(shape),
                           np.zeros(shape, np.uint8)])


def test_encode_png_is_tensorflows():
  import PIL.Image  # pylint: disable=g-import-not-at-top
  got = {}
  for shape, images in _png_cases():
    pngs = cifar_prepare.encode_png(images)
    for png, image in zip(pngs, images):
      with PIL.Image.open(io.BytesIO(png)) as im:
        decoded = np.asarray(im).reshape(image.shape)
      np.testing.assert_array_equal(decoded, image)
    got[str(shape)] = _sha(b''.join(pngs))
  assert got == PNG_GOLDEN

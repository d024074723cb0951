"""CIFAR-10/100 downloaded and prepared as a tfds array_record copy, without TensorFlow.

``prepare(name, data_dir)`` downloads the official binary archive (the URL, size
and sha256 that tfds registers for its ``cifar10`` / ``cifar100`` builder),
verifies it and writes the copy that ``tfds build NAME --file_format=array_record``
writes with TensorFlow, which ``tfds.data_source`` and ``data.tfds_cifar`` read.

Why it is tfds's own copy: tfds writes it. A subclass of tfds's registered CIFAR
builder (same name, version, DatasetInfo, features, label names from the archive)
runs tfds's public ``download_and_prepare``: tfds's serializer, shuffler (keyed on
the example index, as tfds's ``_generate_examples``) and ArrayRecord writer make
the files. The subclass only reads the archive with numpy where tfds's builder
uses TensorFlow, and PNG-encodes with ``encode_png``, a numpy + zlib copy of the
libpng 1.6 settings behind ``tf.io.encode_png`` (same row filters, same deflate
stream). So the metadata files are byte-identical to a TensorFlow build's and the
records are its records, in its order (equal as protos; the order of the fields
inside one serialized record is protobuf's, which varies from process to process,
with TensorFlow as without).

Safe to interrupt and to share: one process per data dir prepares (an exclusive
``fcntl.flock`` on ``DATA_DIR/.NAME.prepare.lock``; the others wait for it), the
download goes to ``DATA_DIR/.ARCHIVE.SHA.part`` (resumed by a later run), is
verified, and the dataset is written under a temporary ``DATA_DIR/.NAME.prepare-*``
dir and renamed into ``DATA_DIR/NAME/VERSION`` only when complete. Failures raise
``errors.DatasetNotPreparedError`` with a one-line message.

Overrides (a mirror, or a test server): the ``url`` / ``sha256`` arguments, else the
environment variables ``SGLR_JAX_CIFAR10_URL`` / ``SGLR_JAX_CIFAR10_SHA256`` (and
``..._CIFAR100_...``). The command line is ``python -m sglr_jax.data.prepare``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import io
import os
import shutil
import sys
import tarfile
import tempfile
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from sglr_jax import errors
from sglr_jax.data import download
from sglr_jax.data.png import encode_png

DATASETS = ('cifar10', 'cifar100')
_PIXELS = 32 * 32 * 3  # bytes of one image in a record, channel-major (CHW)
_ENCODE_BATCH = 1024  # images PNG-encoded at once (numpy filtering memory ~30 MB)


@dataclasses.dataclass(frozen=True)
class Archive:
  """An official CIFAR binary archive as tfds registers it, and what is inside."""
  url: str
  size: int
  sha256: str
  prefix: str  # folder of every member
  train_files: Tuple[str, ...]
  test_files: Tuple[str, ...]
  label_files: Tuple[str, ...]  # class names, one a line, for each of label_keys
  label_keys: Tuple[str, ...]  # the label bytes at the start of each record, in order

  @property
  def filename(self) -> str:
    return self.url.rsplit('/', 1)[-1]


# tensorflow_datasets/url_checksums/{cifar10,cifar100}.txt and image_classification/cifar.py
# (tfds 4.9.10); tests/test_cifar_prepare.py fails if the installed tfds registers others.
ARCHIVES: Dict[str, Archive] = {
    'cifar10': Archive(
        url='https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz',
        size=170052171,
        sha256='c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd',
        prefix='cifar-10-batches-bin/',
        train_files=tuple(f'data_batch_{i}.bin' for i in range(1, 6)),
        test_files=('test_batch.bin',),
        label_files=('batches.meta.txt',),
        label_keys=('label',)),
    'cifar100': Archive(
        url='https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz',
        size=168513733,
        sha256='58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec',
        prefix='cifar-100-binary/',
        train_files=('train.bin',),
        test_files=('test.bin',),
        label_files=('coarse_label_names.txt', 'fine_label_names.txt'),
        label_keys=('coarse_label', 'label')),
}


def _fail(message: str) -> errors.DatasetNotPreparedError:
  return errors.DatasetNotPreparedError(' '.join(message.splitlines()))  # one line


# ----------------------------------------------------------------------------------------
# Reading the archive.

def _read_members(path: str, archive: Archive) -> Dict[str, bytes]:
  """The archive's record and label-name files, read in one pass (no extraction)."""
  wanted = {archive.prefix + f: f for f in
            archive.train_files + archive.test_files + archive.label_files}
  members = {}
  try:
    with tarfile.open(path, 'r|gz') as tar:
      for info in tar:
        if info.name in wanted and info.isfile():
          members[wanted[info.name]] = tar.extractfile(info).read()
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise _BadArchive(f'it is not a readable .tar.gz ({e})') from e
  missing = sorted(set(wanted) - {archive.prefix + f for f in members})
  if missing:
    raise _BadArchive(f'it has no {", ".join(missing)}')
  for f in archive.train_files + archive.test_files:
    _records(members[f], len(archive.label_keys), f)  # whole records, or fail before writing
  return members


def _records(data: bytes, num_labels: int, member: str) -> np.ndarray:
  """A record file -> uint8 [N, num_labels + 3072] (labels, then the image as CHW)."""
  size = num_labels + _PIXELS
  if not data or len(data) % size:
    raise _BadArchive(f'its {member} has {len(data)} bytes, not a multiple of the '
                      f'{size}-byte record')
  return np.frombuffer(data, np.uint8).reshape(-1, size)


class _BadArchive(Exception):
  """The verified file is not the CIFAR binary archive (only with an overridden URL)."""


def _label_names(data: bytes) -> List[str]:
  # As tfds's builder: the file read as text (universal newlines), one name a line.
  return [n for n in io.TextIOWrapper(io.BytesIO(data), encoding='utf-8').read().split('\n')
          if n]


# ----------------------------------------------------------------------------------------
# Writing with tfds.

@functools.lru_cache(maxsize=None)
def _builder_class(name: str):
  """tfds's registered builder for ``name``, reading the archive without TensorFlow.

  A subclass overriding what a tfds dataset author overrides (``_split_generators``,
  ``_generate_examples``), so tfds's own ``download_and_prepare`` writes the files.
  Two more settings keep tfds's output what its own build writes: the instance reports
  tfds's module (the ``moduleName`` of dataset_info.json), and ``url_infos`` is None
  (nothing is downloaded through tfds; looking them up needs ``importlib_resources``).
  """
  tfds_builder = tfds.builder_cls(name)
  dataset_name = name

  class FromArchive(tfds_builder, skip_registration=True):
    """tfds's CIFAR builder whose examples come from an archive already in memory."""
    name = dataset_name
    url_infos = None

    def __init__(self, *, members: Dict[str, bytes], progress: bool, **kwargs):
      self.__module__ = tfds_builder.__module__
      self._sglr_members = members
      self._sglr_progress = progress
      super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
      del dl_manager  # downloaded and verified already
      archive = ARCHIVES[self.name]
      for key, label_file in zip(archive.label_keys, archive.label_files):
        self.info.features[key].names = _label_names(self._sglr_members[label_file])
      return {'train': self._generate_examples('train_', archive.train_files),
              'test': self._generate_examples('test_', archive.test_files)}

    def _generate_examples(self, split_prefix, filenames):
      """Keys and records as tfds's CIFAR ``_generate_examples``: (index, example)."""
      archive = ARCHIVES[self.name]
      num_labels = len(archive.label_keys)
      files = [_records(self._sglr_members[f], num_labels, f) for f in filenames]
      bar = tqdm.tqdm(total=sum(len(r) for r in files), unit=' images', leave=False,
                      desc=f'Preparing {self.name} {split_prefix.rstrip("_")}',
                      disable=not self._sglr_progress)
      index = 0
      with bar:
        for records in files:
          for start in range(0, len(records), _ENCODE_BATCH):
            batch = records[start:start + _ENCODE_BATCH]
            images = batch[:, num_labels:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            for row, png in zip(batch, encode_png(images)):
              example = dict(zip(archive.label_keys, row[:num_labels]))
              example['id'] = f'{split_prefix}{index:05d}'
              example['image'] = png
              yield index, example
              index += 1
            bar.update(len(batch))

  return FromArchive


@contextlib.contextmanager
def _tfds_bars(enable: bool):
  """tfds's progress bars on or off inside the block, as they were after it."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  before = getattr(tqdm_utils, '_active', True)
  tqdm_utils.display_progress_bar(enable)
  try:
    yield
  finally:
    tqdm_utils.display_progress_bar(before)


def _write_dataset(name: str, members: Dict[str, bytes], root: str, download_size: int,
                   progress: bool) -> str:
  """Writes the prepared dataset under the data dir ``root``; returns its version dir."""
  builder = _builder_class(name)(members=members, progress=progress, data_dir=root,
                                 file_format=tfds.core.FileFormat.ARRAY_RECORD)
  # tfds prints where it writes (the temporary dir) and shows bars of its own, naming
  # that dir: ours are the message and the bar that count.
  with contextlib.redirect_stdout(io.StringIO()), _tfds_bars(False):
    builder.download_and_prepare(
        download_dir=os.path.join(root, 'downloads'),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  # tfds records the bytes its download manager fetched; the archive came our way.
  builder.info.download_size = download_size
  builder.info.write_dataset_info_json(builder.data_path)
  return os.fspath(builder.data_path)


# ----------------------------------------------------------------------------------------
# prepare

def default_data_dir() -> str:
  """tfds's default data dir (``TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
  return os.path.expanduser(os.fspath(tfds.core.constants.DATA_DIR))


def prepared_dir(name: str, data_dir=None) -> Optional[str]:
  """The version dir of ``name`` prepared as array_record under ``data_dir``, or None.

  Raises ``errors.DatasetNotPreparedError`` for a copy in another file format (tfds
  build's default, TFRecord): it must not be taken for missing and prepared over.
  """
  if name not in DATASETS:
    raise errors.ConfigError(f'{name!r} is not a dataset prepare knows; allowed: '
                             f'{", ".join(DATASETS)}')
  data_dir = os.fspath(data_dir) if data_dir else default_data_dir()
  path = os.path.join(data_dir, name, str(tfds.builder_cls(name).VERSION))
  if not os.path.isfile(os.path.join(path, 'dataset_info.json')):
    return None  # (tfds's is_prepared() says the same, with a warning)
  fmt = tfds.builder(name, data_dir=data_dir).info.file_format
  if fmt is None or fmt not in tfds.core.FileFormat.with_random_access():
    fmt_name = fmt.value if fmt is not None else 'tfrecord'
    raise _fail(
        f'{path} holds {name} prepared as {fmt_name} (tfds build\'s default), which '
        'tfds.data_source cannot read: move it away and run `python -m '
        f'sglr_jax.data.prepare {name} --data_dir={data_dir}` (or, with TensorFlow, '
        f'`tfds build {name} --data_dir=DIR --file_format=array_record`).')
  return path


def _override(name: str, value: Optional[str], what: str) -> Optional[str]:
  return value or os.environ.get(f'SGLR_JAX_{name.upper()}_{what}') or None


def prepare(name: str, data_dir=None, *, url: Optional[str] = None,
            sha256: Optional[str] = None, progress: bool = True,
            lock_timeout_s: float = 3600.0) -> str:
  """Downloads and prepares ``name`` under ``data_dir`` unless it is there; returns its dir.

  ``name``: 'cifar10' or 'cifar100'; ``data_dir``: a tfds data dir (None: tfds's
  default); ``url`` / ``sha256``: a mirror or test server and the sha256 of what it
  serves (default: the environment's ``SGLR_JAX_<NAME>_URL`` / ``_SHA256``, else the
  official archive; a mirror of it needs no ``sha256``). Raises
  ``errors.DatasetNotPreparedError`` (one line) when it cannot.
  """
  found = prepared_dir(name, data_dir)
  if found:
    return found
  data_dir = os.fspath(data_dir) if data_dir else default_data_dir()
  archive = ARCHIVES[name]
  url = _override(name, url, 'URL') or archive.url
  sha256 = (_override(name, sha256, 'SHA256') or archive.sha256).lower()
  size = archive.size if sha256 == archive.sha256 else None
  try:
    os.makedirs(data_dir, exist_ok=True)
    lock_path = os.path.join(data_dir, f'.{name}.prepare.lock')
    with download.exclusive(lock_path, f'{name} in {data_dir}', lock_timeout_s, progress):
      found = prepared_dir(name, data_dir)  # by the process we waited for
      if found:
        return found
      return _prepare_locked(name, data_dir, archive, url, sha256, size, progress)
  except PermissionError as e:
    raise _fail(f'Cannot prepare {name} in {data_dir}: {e}. Set data.data_dir (or '
                '--data_dir) to a directory you can write to.') from None


def _prepare_locked(name, data_dir, archive, url, sha256, size, progress) -> str:
  """``prepare`` once this process holds the data dir's lock."""
  for stale in glob.glob(os.path.join(glob.escape(data_dir), f'.{name}.prepare-*')):
    shutil.rmtree(stale, ignore_errors=True)  # an interrupted run's
  copy_hint = (f'Without network access here, prepare it where there is (`python -m '
               f'sglr_jax.data.prepare {name} --data_dir=DIR`) and copy DIR/{name} to '
               f'{os.path.join(data_dir, name)}.')
  target = os.path.join(data_dir, name, str(tfds.builder_cls(name).VERSION))
  if os.path.exists(target):  # without dataset_info.json: not tfds's, nor ours
    raise _fail(f'{target} exists but is no prepared dataset (it has no dataset_info.json): '
                'remove it and run again.')
  verified = os.path.join(data_dir, f'.{archive.filename}.{sha256[:16]}')
  part = verified + '.part'
  if not os.path.exists(verified):
    for attempt in range(2):
      try:
        resumed = download.download(url, part, size, progress)
      except download.DownloadFailed as e:
        if e.cut:
          raise _fail(f'The download of {name} from {url} stopped: {e}. Nothing was '
                      f'prepared; run again to resume it. {copy_hint}') from None
        raise _fail(f'Could not download {name} from {url}: {e}. {copy_hint}') from None
      got = download.sha256(part)
      if got == sha256:
        os.replace(part, verified)
        break
      os.remove(part)
      if resumed and not attempt:
        continue  # the part kept from an earlier run was bad: once more from the start
      raise _fail(f'The file downloaded from {url} has sha256 {got}, not the expected '
                  f'{sha256} ({name}): a corrupted download or a changed file. It was '
                  f'deleted and nothing was prepared. {copy_hint}')
  download_size = os.path.getsize(verified)
  try:
    members = _read_members(verified, archive)
    root = tempfile.mkdtemp(prefix=f'.{name}.prepare-', dir=data_dir)
    try:
      written = _write_dataset(name, members, root, download_size, progress)
      if os.path.relpath(written, root) != os.path.relpath(target, data_dir):
        raise RuntimeError(f'tfds wrote {written}, expected {name}/VERSION under {root}')
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.rename(written, target)
    finally:
      shutil.rmtree(root, ignore_errors=True)
  except _BadArchive as e:
    os.remove(verified)
    raise _fail(f'The file downloaded from {url} is not the CIFAR binary archive of {name}: '
                f'{e}. Nothing was prepared.') from None
  except OSError as e:  # a full disk, say; the verified download is kept for the next run
    raise _fail(f'Could not write {name} under {data_dir}: {e}. Nothing was '
                'prepared.') from e
  os.remove(verified)
  if progress:
    print(f'Prepared {name} in {target}', file=sys.stderr, flush=True)
  return target

"""Orbax's two commit protocols on a local disk, the 'auto' choice, URL workdir checks and
the abstract restore target."""
from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config
from sglr_jax import checkpoints, errors, experiment, storage, workdir as workdir_lib


@pytest.fixture(scope='module')
def exp():
  return experiment.build(tiny_config())


@pytest.fixture(scope='module')
def state(exp):
  return experiment.initial_state(exp)


def _leaves_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _files(d):
  return sorted(os.path.relpath(os.path.join(r, n), d) for r, _, ns in os.walk(d) for n in ns)


@pytest.mark.parametrize('asynchronous', [False, True])
def test_commit_file_writes_in_place_and_commits_with_the_marker(
    state, tmp_path, monkeypatch, asynchronous):
  """'commit_file': the manifest is written into the step directory itself (no temporary
  directory, no rename), the marker comes last; ``also`` gets byte-equal copies (not
  links) with their own marker; every reader accepts the result."""
  wd = str(tmp_path)
  seen = []
  real = checkpoints.write_manifest

  def spy(directory):
    seen.append((str(directory), os.listdir(os.path.dirname(str(directory)))))
    real(directory)

  monkeypatch.setattr(checkpoints, 'write_manifest', spy)
  checkpoints.save(wd, 'latest', state, 8, {'epoch': 2}, asynchronous=asynchronous,
                   also=(('best', 2), ('final', 2)), commit='commit_file')
  checkpoints.wait()
  latest = os.path.join(wd, 'checkpoints', 'latest', '8')
  assert seen == [(latest, ['8'])]  # finalised in place: no '.orbax-checkpoint-tmp' sibling
  files = _files(latest)
  assert 'MANIFEST' in files and checkpoints.COMMIT_FILE in files
  for kind in ('best', 'final'):
    d = os.path.join(wd, 'checkpoints', kind, '2')
    assert _files(d) == files
    for rel in files:
      assert os.stat(os.path.join(d, rel)).st_ino != os.stat(os.path.join(latest, rel)).st_ino
      with open(os.path.join(d, rel), 'rb') as a, open(os.path.join(latest, rel), 'rb') as b:
        assert a.read() == b.read()
    assert checkpoints.committed(wd, kind, 2)
    assert checkpoints.verify_manifest(d) is True
  for commit in ('commit_file', 'rename', 'auto'):  # readers accept it whatever they expect
    got, key, progress = checkpoints.restore(wd, 'latest', state, with_progress=True,
                                             read_only=True, commit=commit)
    assert (key, progress) == (8, {'epoch': 2})
    _leaves_equal(got, state)
  assert checkpoints.available(wd, 'latest') == [8]


def test_a_rename_checkpoint_reads_under_commit_file(state, tmp_path):
  wd = str(tmp_path)
  checkpoints.save(wd, 'latest', state, 3, commit='rename')
  got, key = checkpoints.restore(wd, 'latest', state, commit='commit_file')
  assert key == 3
  _leaves_equal(got, state)


def _unmarked_copy(wd, src_step, step):
  """A step directory as a killed commit-file save leaves it: files, no marker."""
  root = os.path.join(wd, 'checkpoints', 'latest')
  src, dst = os.path.join(root, str(src_step)), os.path.join(root, str(step))
  for rel in _files(src):
    if rel != checkpoints.COMMIT_FILE:
      os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
      with open(os.path.join(src, rel), 'rb') as a, open(os.path.join(dst, rel), 'wb') as b:
        b.write(a.read())
  return dst


def test_an_interrupted_commit_file_save_is_removed_and_the_one_before_used(state, tmp_path):
  wd = str(tmp_path)
  checkpoints.save(wd, 'latest', state, 4, commit='commit_file')
  dst = _unmarked_copy(wd, 4, 6)
  assert checkpoints.available(wd, 'latest') == [4, 6]  # listed, not committed
  assert not checkpoints.committed(wd, 'latest', 6)
  got, key = checkpoints.restore(wd, 'latest', state, commit='commit_file')
  assert key == 4 and not os.path.exists(dst)
  assert not os.path.exists(os.path.join(wd, 'checkpoints', 'corrupt'))
  _leaves_equal(got, state)


def test_an_unmarked_step_under_rename_is_damaged_and_set_aside(state, tmp_path):
  """The rename protocol never leaves an unmarked step directory: one is damage, kept
  in ``corrupt/`` for inspection."""
  wd = str(tmp_path)
  checkpoints.save(wd, 'latest', state, 4, commit='rename')
  _unmarked_copy(wd, 4, 6)
  _, key = checkpoints.restore(wd, 'latest', state, commit='rename')
  assert key == 4
  assert [n.split('-')[:2] for n in os.listdir(os.path.join(wd, 'checkpoints', 'corrupt'))] == [
      ['latest', '6']]


def test_auto_commit_mode_follows_the_storage(tmp_path):
  mounts = tmp_path / 'mounts'
  mounts.write_text('/dev/sda1 / ext4 rw 0 0\n'
                    'bucket /mnt/gcs fuse.gcsfuse rw 0 0\n'
                    '/dev/sdb1 /mnt/gcs/inner ext4 rw 0 0\n')
  mode = lambda setting, path: storage.commit_mode(setting, path, str(mounts))
  assert mode('auto', 'gs://bucket/run/checkpoints/latest') == 'commit_file'
  assert mode('auto', '/mnt/gcs/run') == 'commit_file'
  assert mode('auto', '/mnt/gcs/inner/run') == 'rename'  # the longest mount point wins
  assert mode('auto', '/mnt/gcsx/run') == 'rename'
  assert mode('auto', '/home/run') == 'rename'
  assert mode('rename', 'gs://bucket/run') == 'rename'
  assert mode('commit_file', '/home/run') == 'commit_file'
  with pytest.raises(errors.ConfigError, match='checkpoint_commit'):
    mode('atomic', '/home/run')


def test_url_paths_keep_their_scheme():
  assert storage.join('gs://b/run', 'checkpoints', 'latest') == 'gs://b/run/checkpoints/latest'
  assert storage.abspath('gs://b/run/') == 'gs://b/run'
  assert storage.basename('gs://b/run/') == 'run'
  assert storage.dirname('gs://b/run/x') == 'gs://b/run'
  assert storage.join('/a', 'b') == '/a/b'


def test_a_url_workdir_without_its_package_is_one_clear_line(monkeypatch):
  monkeypatch.setitem(sys.modules, 'gcsfs', None)  # import gcsfs raises ImportError
  with pytest.raises(errors.UserError, match=r"package 'gcsfs'.*pip install gcsfs"):
    workdir_lib.check_writable('gs://bucket/run')
  from sglr_jax import cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.UserError, match='pip install gcsfs'):
    cli.run_argv(['run.py', '--workdir=gs://bucket/run', '--mode=report'])
  with pytest.raises(errors.UserError, match='unsupported URL scheme'):
    storage.check_url_support('ftp://host/run')


def test_write_text_writes_the_workdir_file(tmp_path):
  wd = str(tmp_path / 'new' / 'run')
  workdir_lib.write_text(wd, 'config.json', '{"a": 1}\n')
  with open(os.path.join(wd, 'config.json'), 'rb') as f:
    assert f.read() == b'{"a": 1}\n'


def test_the_restore_target_is_abstract_and_matches_the_initial_state(exp, state):
  abstract = experiment.abstract_state(exp)
  leaves, want = jax.tree.leaves(abstract), jax.tree.leaves(state)
  assert len(leaves) == len(want)
  for a, w in zip(leaves, want):
    assert isinstance(a, jax.ShapeDtypeStruct)
    assert (a.shape, a.dtype, a.sharding) == (w.shape, w.dtype, w.sharding)
  paths = lambda t: [p for p, _ in jax.tree_util.tree_flatten_with_path(t)[0]]
  assert paths(abstract) == paths(state)  # the static fields (the optimizer) are rebuilt

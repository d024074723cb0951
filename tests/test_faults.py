"""Fault injection: damaged bytes, divergence, SIGKILL while finishing or between the
history line and the checkpoint, a full disk, two runs on one workdir, and every user
error as one line with exit status 2 and an untouched workdir.

Kill points are chosen by the run itself (a patched save or history append in a child
process), never by a timer. Child runs go through ``_cli``: one child process runs a
batch of cases in turn, each in a fork of itself: ``run.py ARGV`` (exec'd, so that it sets
up XLA's devices before it imports jax, as a user's run does) or the training loop with a
kill point patched in.

  python tests/test_faults.py SPEC.json   # that child (``_serve``)
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
import types

import pytest

import _mp_worker as w
from conftest import ROOT, tiny_config
from sglr_jax import checkpoints, errors, experiment, history, workdir as workdir_lib
from sglr_jax.training import loop
from test_preemption import _strip

TINY = ['--config=configs/mnist_sglr.py', '--config.model.width=8',
        '--config.data.train_size=256', '--config.data.test_size=100',
        '--config.train.batch_size=64', '--config.train.epochs=2',
        '--config.schedule.decay_epochs=(2,)', '--config.attack.steps=2',
        '--config.eval.steps=3', '--config.eval.batch_size=50', '--config.sglr.start_epoch=1',
        '--progress=false']
EPOCHS2 = {'train.epochs': 2}


def _case(wd, *args) -> dict:
  """A command-line case: ``run.py --workdir=WD TINY ARGS``."""
  return {'workdir': str(wd), 'argv': [f'--workdir={wd}'] + TINY + list(args)}


def _cli(cases: list[dict]) -> list[types.SimpleNamespace]:
  """Runs ``cases`` in turn in one ``_serve`` child: per case its ``returncode``
  (negative: killed by that signal), ``stdout``, ``stderr`` and ``available`` (the
  checkpoint keys of each kind right after it)."""
  tmp = tempfile.mkdtemp(prefix='sglr_faults_')
  try:
    spec = os.path.join(tmp, 'spec.json')
    with open(spec, 'w') as f:
      json.dump({'cases': cases, 'dir': tmp}, f)
    p = subprocess.run([sys.executable, os.path.abspath(__file__), spec], cwd=ROOT,
                       env=w.subprocess_env(1), capture_output=True, text=True,
                       timeout=w.WAIT_S)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(os.path.join(tmp, 'results.json')) as f:
      results = json.load(f)
    out = []
    for i, r in enumerate(results):
      text = {s: open(os.path.join(tmp, f'{i}.{s}'), errors='replace').read()
              for s in ('stdout', 'stderr')}
      out.append(types.SimpleNamespace(returncode=r['rc'], available=r['available'], **text))
    return out
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _serve(spec_path: str) -> None:
  """The child of ``_cli``: forks once per case and waits for it (no JAX backend has
  started here, so forking is safe)."""
  with open(spec_path) as f:
    spec = json.load(f)
  results = []
  for i, case in enumerate(spec['cases']):
    pid = os.fork()
    if pid == 0:
      _run_case(case, os.path.join(spec['dir'], str(i)))  # never returns
    _, status = os.waitpid(pid, 0)
    wd = case['workdir']
    results.append({'rc': os.waitstatus_to_exitcode(status),
                    'available': {k: checkpoints.available(wd, k) for k in checkpoints.KINDS}
                                  if '://' not in wd else {}})
  with open(os.path.join(spec['dir'], 'results.json'), 'w') as f:
    json.dump(results, f)


def _run_case(case: dict, prefix: str) -> None:
  """In a fork: stdout/stderr to ``prefix.{stdout,stderr}``, then ``run.py ARGV`` or,
  with ``train``, the case's kill point patched in and ``loop.train_and_evaluate`` on
  ``tiny_config(**train)`` (as the in-process runs, on the same devices); ends the
  process."""
  for fd, s in ((1, 'stdout'), (2, 'stderr')):
    os.dup2(os.open(f'{prefix}.{s}', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
  code = 1
  try:
    if case.get('sigkill_in_save'):
      w.kill_inside_save(case['sigkill_in_save'])
    if case.get('sigkill_after_history'):
      _kill_after_history(case['sigkill_after_history'])
    if 'train' in case:
      train = {k: tuple(v) if isinstance(v, list) else v for k, v in case['train'].items()}
      loop.train_and_evaluate(tiny_config(**train), case['workdir'], progress=False)
    else:  # a fresh interpreter: run.py sets up XLA's devices before it imports jax
      os.execv(sys.executable, [sys.executable, os.path.join(ROOT, 'run.py')] + case['argv'])
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else int(e.code is not None)
  except BaseException:  # pylint: disable=broad-except  # as the interpreter would
    traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def _kill_after_history(epoch: int) -> None:
  """SIGKILLs this process right after the history line of ``epoch`` is written (and
  fsynced), before that epoch's checkpoints are saved."""
  append = history.append_history

  def append_then_kill(workdir, record):
    append(workdir, record)
    if record['epoch'] == epoch:
      os.kill(os.getpid(), signal.SIGKILL)

  history.append_history = append_then_kill


def _error_lines(stderr):
  """stderr without JAX/absl log noise."""
  return [l for l in stderr.splitlines() if l.startswith('error:') or 'Traceback' in l]


def _snapshot(wd):
  """{relative path: bytes} of every file but the lock's."""
  out = {}
  for root, _, files in os.walk(wd):
    for f in files:
      p = os.path.join(root, f)
      if f != workdir_lib.LOCK_FILE:
        out[os.path.relpath(p, wd)] = open(p, 'rb').read()
  return out


@pytest.fixture(scope='module')
def halted(tmp_path_factory):
  """A 2-epoch run stopped (resumably) after epoch 1: latest/4, best/1, no final."""
  wd = str(tmp_path_factory.mktemp('halted'))
  loop.train_and_evaluate(tiny_config(**{'train.epochs': 2, 'train.halt_after_epoch': 1}), wd,
                          progress=False)
  return wd


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """The history of the 2-epoch run, uninterrupted (timing fields dropped)."""
  wd = str(tmp_path_factory.mktemp('uninterrupted'))
  return _strip(loop.train_and_evaluate(tiny_config(**EPOCHS2), wd, progress=False))


@pytest.fixture(scope='module')
def crashes(halted, tmp_path_factory):
  """From copies of ``halted``, in one ``_cli`` call: a diverging run; a run SIGKILLed
  inside the save of final/2, then re-run; a run SIGKILLed right after epoch 2's
  history line. {name: (workdir, result[, result of the re-run])}."""
  wds = {}
  for name in ('diverged', 'in_final_save', 'after_history'):
    wds[name] = str(tmp_path_factory.mktemp(name) / 'wd')
    shutil.copytree(halted, wds[name])
  r = _cli([
      _case(wds['diverged'], '--config.optim.lr=1e4'),
      {'workdir': wds['in_final_save'], 'train': EPOCHS2, 'sigkill_in_save': 'final/2'},
      _case(wds['in_final_save']),
      {'workdir': wds['after_history'], 'train': EPOCHS2, 'sigkill_after_history': 2}])
  return {'diverged': (wds['diverged'], r[0]), 'in_final_save': (wds['in_final_save'], *r[1:3]),
          'after_history': (wds['after_history'], r[3])}


@pytest.fixture(scope='module')
def user_errors(halted, tmp_path_factory):
  """Every user-error run, in one ``_cli`` call, each on its own copy of ``halted`` (or
  its own bad workdir): {name: (result, workdir, snapshot before)}. The workdir of
  'locked' is locked by this process meanwhile."""
  tmp = tmp_path_factory.mktemp('user_errors')
  runs = {}
  for i, (args, _) in enumerate(USER_ERRORS + [([], 'locked')]):
    wd = str(tmp / f'wd{i}')
    shutil.copytree(halted, wd)
    runs[i if args else 'locked'] = (wd, _case(wd, *args), _snapshot(wd))
  afile = tmp / 'afile'
  afile.write_text('x')
  bad = tmp / 'bad.py'
  bad.write_text('def get_config(:\n')
  for name, wd, extra in [('is a file', afile, []), ('which is a file', afile / 'sub', []),
                          ('SyntaxError', tmp / 'w', [f'--config={bad}']),
                          ('unsupported URL scheme', 'ftp://sglr-test/run', [])]:
    runs[name] = (str(wd), _case(wd, *extra), None)
  names = list(runs)
  with workdir_lib.Lock(runs['locked'][0]):
    results = _cli([runs[n][1] for n in names])
  return {n: (r, runs[n][0], runs[n][2]) for n, r in zip(names, results)}


def test_damaged_array_bytes_are_detected(halted, tmp_path, caplog):
  """Random bytes inside an array file: training falls back (naming the file);
  evaluation names the checkpoint as damaged and moves nothing."""
  wd = str(tmp_path / 'wd')
  shutil.copytree(halted, wd)
  st = experiment.initial_state(experiment.build(tiny_config(**EPOCHS2)))
  best = os.path.join(wd, 'checkpoints', 'best', '1')
  shutil.copytree(best, os.path.join(wd, 'checkpoints', 'latest', '3'))  # an older copy
  for d in (best, os.path.join(wd, 'checkpoints', 'latest', '4')):
    f = max(glob.glob(f'{d}/state/**/d/*', recursive=True), key=os.path.getsize)
    with open(f, 'r+b') as fh:
      fh.seek(os.path.getsize(f) // 2)
      fh.write(b'\xff' * 16)
  before = _snapshot(wd)
  with pytest.raises(errors.NoCheckpointError, match=r'best/1 .* is damaged'):
    experiment.restore(experiment.build(tiny_config(**EPOCHS2)), wd, 'best')
  assert _snapshot(wd) == before  # read-only
  _, key = checkpoints.restore(wd, 'latest', st)
  assert key == 3
  assert 'does not match its checksum' in caplog.text and 'latest/4' in caplog.text


def test_divergence_exits_3_and_keeps_the_last_good_checkpoint(crashes):
  wd, p = crashes['diverged']
  assert p.returncode == 3, p.stderr[-2000:]
  lines = _error_lines(p.stderr)
  assert len(lines) == 1 and 'non-finite' in lines[0] and 'epoch 2, step' in lines[0], lines
  assert checkpoints.available(wd, 'latest') == [4]
  assert checkpoints.available(wd, 'final') == [] and checkpoints.available(wd, 'best') == [1]
  text = open(os.path.join(wd, 'history.jsonl')).read()
  assert 'NaN' not in text and 'Infinity' not in text
  assert [r['epoch'] for r in history.read_history(wd)] == [1]


def test_strict_json_writes_null_for_non_finite(tmp_path):
  history.append_history(str(tmp_path), {'epoch': 1, 'train_loss': float('nan'),
                                         'grad_norm': float('inf')})
  line = open(tmp_path / 'history.jsonl').read()
  assert json.loads(line, parse_constant=lambda c: pytest.fail(c)) == {
      'epoch': 1, 'train_loss': None, 'grad_norm': None}


def test_sigkill_inside_the_final_save_then_rerun_finishes(crashes):
  """Killed inside the save of final/2 (its files linked from latest/8, not renamed into
  place): the re-run saves final/2, logs nothing twice and exits 0."""
  wd, killed, p = crashes['in_final_save']
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert killed.available['final'] == []
  assert killed.available['latest'][-1] == 8
  assert p.returncode == 0, p.stderr[-2000:]
  assert p.stdout.strip().startswith('done: epoch 2')
  assert checkpoints.committed(wd, 'final', 2)
  assert [r['epoch'] for r in history.read_history(wd)] == [1, 2]


def test_sigkill_between_history_and_checkpoint_then_rerun_matches(crashes, uninterrupted):
  """Killed after epoch 2's history line, before its checkpoints: the re-run resumes
  from latest/4, replaces that line, and logs what an uninterrupted run logs."""
  wd, killed = crashes['after_history']
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert killed.available == {'latest': [4], 'best': [1], 'final': []}
  assert [r['epoch'] for r in history.read_history(wd)] == [1, 2]  # the line was written
  resumed = loop.train_and_evaluate(tiny_config(**EPOCHS2), wd, progress=False)
  assert _strip(resumed) == uninterrupted
  assert _strip(history.read_history(wd)) == uninterrupted
  assert len(open(os.path.join(wd, 'history.jsonl')).read().splitlines()) == 2
  assert checkpoints.committed(wd, 'final', 2) and checkpoints.available(wd, 'latest')[-1] == 8


def _used_bytes(path: str) -> int:
  s = os.statvfs(path)
  return (s.f_blocks - s.f_bfree) * s.f_frsize


def _page_bytes(directory: str) -> int:
  """What the files under ``directory`` take on a tmpfs (whole 4 KiB pages)."""
  return sum(-(-os.path.getsize(os.path.join(r, f)) // 4096) * 4096
             for r, _, names in os.walk(directory) for f in names)


@pytest.fixture
def small_disk(tmp_path):
  """A 64 MiB tmpfs at ``tmp_path/disk`` (root only; skipped otherwise), and a
  function that resizes it; unmounted at the end."""
  disk = str(tmp_path / 'disk')
  os.mkdir(disk)
  if os.geteuid() != 0:
    pytest.skip('mounting a small tmpfs (to fill the disk) needs root')
  try:
    p = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', disk],
                       capture_output=True, text=True, timeout=60)
  except FileNotFoundError:
    pytest.skip('no mount command')
  if p.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {p.stderr.strip()}')

  def resize(nbytes: int):
    subprocess.run(['mount', '-o', f'remount,size={nbytes}', disk], check=True, timeout=60)

  try:
    yield disk, resize
  finally:
    subprocess.run(['umount', '-l', disk], timeout=60)


def test_a_full_disk_is_one_line_then_the_rerun_resumes(halted, small_disk):
  """A save that finds the disk full: exit status 2, one line naming the disk, the
  last complete checkpoint kept; with space again the same run resumes and finishes."""
  disk, resize = small_disk
  wd = os.path.join(disk, 'wd')
  shutil.copytree(halted, wd)
  one = _page_bytes(os.path.join(wd, 'checkpoints', 'latest', '4'))
  # latest/4 + best/1 + config and history fit; the next checkpoint does not.
  resize(-(-(_used_bytes(disk) + one // 2) // 4096) * 4096)
  epoch1 = history.read_history(wd)
  p, = _cli([_case(wd)])
  assert p.returncode == 2, p.stderr[-3000:]
  assert 'Traceback' not in p.stderr, p.stderr[-3000:]
  # nothing but the one line and warnings (a resume is logged)
  lines = [l for l in p.stderr.splitlines() if not l.startswith('W')]
  assert len(lines) == 1, p.stderr[-3000:]
  assert lines[0].startswith(f'error: no space left on the disk of {disk}'), lines
  assert p.available['latest'] == [4] and p.available['final'] == []
  resize(64 << 20)
  hist = loop.train_and_evaluate(tiny_config(**EPOCHS2), wd, progress=False)
  assert [r['epoch'] for r in hist] == [1, 2]
  assert hist[0] == epoch1[0]  # resumed: epoch 1 (timing fields too) is the halted run's
  assert checkpoints.committed(wd, 'final', 2) and checkpoints.available(wd, 'latest')[-1] == 8


def test_a_second_run_on_a_locked_workdir_stops_at_once(user_errors):
  p, wd, before = user_errors['locked']
  assert p.returncode == 2
  lines = _error_lines(p.stderr)
  assert len(lines) == 1 and f'pid {os.getpid()}' in lines[0], lines
  assert _snapshot(wd) == before
  with workdir_lib.Lock(wd):  # released: a lock of an ended holder is taken over
    pass


USER_ERRORS = [
    (['--config.train.epochz=3'], 'epochz'),
    (['--config.train.batch_size=63', '--cpu_devices=2'], 'divisible'),
    (['--config.parallel.num_devices=64'], 'parallel.num_devices'),
    (['--config.attack.steps=0'], 'attack.steps'),
    (['--config.model.width=16'], 'shape'),  # a resume with another model
    (['--progress=maybe'], 'progress'),
]


@pytest.mark.parametrize('i', range(len(USER_ERRORS)),
                         ids=[needle for _, needle in USER_ERRORS])
def test_user_errors_are_one_line_and_leave_the_workdir_alone(user_errors, i):
  p, wd, before = user_errors[i]
  needle = USER_ERRORS[i][1]
  assert p.returncode == 2, p.stderr[-2000:]
  lines = _error_lines(p.stderr)
  assert len(lines) == 1 and needle in lines[0], lines
  assert _snapshot(wd) == before


def test_bad_workdirs_and_config_files_are_one_line(user_errors):
  for needle in ('is a file', 'which is a file', 'SyntaxError', 'unsupported URL scheme'):
    p, _, _ = user_errors[needle]
    assert p.returncode == 2, p.stderr[-2000:]
    lines = _error_lines(p.stderr)
    assert len(lines) == 1 and needle in lines[0], lines
  afile = user_errors['is a file'][1]
  assert open(afile).read() == 'x' and not os.path.exists(user_errors['SyntaxError'][1])
  assert not os.path.exists(os.path.join(ROOT, 'ftp:'))  # no local tree named like the URL


if __name__ == '__main__':
  _serve(sys.argv[1])

"""Preemption and crashes: SIGTERM saves mid-epoch and exits; SIGKILL (here: during a
save) loses nothing but the unfinished work; a partial newest checkpoint is set
aside with a warning. Every resumed run must log exactly the history of an
uninterrupted one (times aside).

The run is ``tiny_config()`` (the config of test_train.py, so the two files share
compiled programs): 256 examples, 4 steps of 64 per epoch, 3 epochs, SGLR from
epoch 2; ``latest`` checkpoints are keyed by the optimizer step.
"""
import os
import shutil
import signal
import time

import pytest

import _mp_worker as w
from conftest import tiny_config
from sglr_jax import checkpoints, metrics, train
from sglr_jax import steps as steps_lib

TIME_KEYS = ('epoch_time_s', 'train_time_s')
SIGTERM_AFTER = 6  # global step: the 2nd of 4 in epoch 2


def _strip(history):
  return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in history]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('uninterrupted'))
  return _strip(train.train_and_evaluate(tiny_config(), wd, progress=False))


@pytest.fixture(scope='module')
def preempted(tmp_path_factory):
  """A run that receives SIGTERM while step SIGTERM_AFTER runs, and what it returned."""
  wd = str(tmp_path_factory.mktemp('preempted'))
  real = steps_lib.make_train_step
  calls = []

  def make_train_step(*args, **kwargs):
    step = real(*args, **kwargs)

    def signalling_step(st, batch):
      out = step(st, batch)
      calls.append(1)
      if len(calls) == SIGTERM_AFTER:
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop's handler
      return out
    return signalling_step

  before = signal.getsignal(signal.SIGTERM)
  mp = pytest.MonkeyPatch()
  mp.setattr(steps_lib, 'make_train_step', make_train_step)
  try:
    history = train.train_and_evaluate(tiny_config(), wd, progress=False)
  finally:
    mp.undo()
  assert signal.getsignal(signal.SIGTERM) is before  # the loop's handler is removed
  return wd, history, len(calls)


def test_sigterm_saves_mid_epoch_and_stops(preempted):
  wd, history, calls = preempted
  assert calls == SIGTERM_AFTER  # no step after the signal
  assert [r['epoch'] for r in history] == [1]
  assert checkpoints.available(wd, 'latest') == [4, 6]  # epoch 1's end, then mid-epoch 2
  progress = checkpoints.read_progress(wd, 'latest', 6)
  assert progress['epoch'] == 1 and progress['step_in_epoch'] == 2
  assert len(progress['metrics']) == 2 and progress['metrics'][0]['count'] == 64


def test_resume_after_sigterm_matches_an_uninterrupted_run(preempted, reference, tmp_path):
  wd = str(tmp_path / 'wd')
  shutil.copytree(preempted[0], wd)
  history = train.train_and_evaluate(tiny_config(), wd, progress=False)
  assert _strip(history) == reference
  assert checkpoints.available(wd, 'latest') == [8, 12]


def test_partial_newest_checkpoint_is_set_aside_with_a_warning(preempted, reference, tmp_path,
                                                                caplog):
  """The newest checkpoint lacks its commit marker (a save cut short on storage
  without atomic rename) and an interrupted save left a temporary directory: the
  resume warns, keeps the damaged one under checkpoints/corrupt/, starts from the
  one before (end of epoch 1) and still logs the uninterrupted history."""
  wd = str(tmp_path / 'wd')
  shutil.copytree(preempted[0], wd)
  latest = os.path.join(wd, 'checkpoints', 'latest')
  os.remove(os.path.join(latest, '6', checkpoints.COMMIT_FILE))
  os.makedirs(os.path.join(latest, '7.orbax-checkpoint-tmp-1234', 'state'))
  history = train.train_and_evaluate(tiny_config(), wd, progress=False)
  assert 'checkpoint latest/6 is unreadable' in caplog.text
  assert 'resuming from checkpoint latest/4' in caplog.text
  assert _strip(history) == reference
  assert checkpoints.available(wd, 'latest') == [8, 12]  # the temporary directory is gone
  assert [n.split('-')[:2] for n in os.listdir(os.path.join(wd, 'checkpoints', 'corrupt'))] == [
      ['latest', '6']]


def test_sigkill_during_a_save_then_resume_matches(reference, tmp_path):
  """A child trains saving ``latest`` after every step; once epoch 1 is logged, it is
  killed with SIGKILL as soon as a save is seen in progress. The resume starts from
  the last complete checkpoint (mid-epoch) and logs the uninterrupted history."""
  wd = str(tmp_path / 'wd')
  spec = {'job': 'train', 'base': 'tiny', 'overrides': {'train.checkpoint_every_steps': 1},
          'workdir': wd}
  proc, log = w.start_job(spec, devices=1, tmp=str(tmp_path))
  latest = os.path.join(wd, 'checkpoints', 'latest')
  history = os.path.join(wd, 'history.jsonl')
  in_save = False
  try:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(history) and os.path.getsize(history) and os.path.isdir(latest):
        names = os.listdir(latest)
        if any('.orbax-checkpoint-tmp' in n for n in names) and any(n.isdigit() for n in names):
          proc.send_signal(signal.SIGKILL)
          in_save = True
          break
      time.sleep(0.002)
    proc.wait(timeout=30)
  finally:
    w.stop([proc])
  assert in_save and proc.returncode == -signal.SIGKILL, w.tail(log)
  # Usually a partial save is left; the kill can also land just after its rename.
  left = sorted(os.listdir(latest))
  print('left by the kill:', left)
  assert any(n.isdigit() for n in left) and len(metrics.read_history(wd)) >= 1
  resumed = train.train_and_evaluate(tiny_config(), wd, progress=False)
  assert _strip(resumed) == reference, left
  assert not any('.orbax-checkpoint-tmp' in n for n in os.listdir(latest))


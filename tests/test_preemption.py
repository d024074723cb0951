"""Preemption and crashes: SIGTERM saves mid-epoch and exits; SIGKILL (here: during a
save) loses nothing but the unfinished work; a partial newest checkpoint is set
aside with a warning. Every resumed run must log exactly the history of an
uninterrupted one (times aside).

The run is ``tiny_config()`` (the config of test_loop.py, so the two files share
compiled programs): 256 examples, 4 steps of 64 per epoch, 3 epochs, SGLR from
epoch 2; ``latest`` checkpoints are keyed by the optimizer step.
"""
import os
import shutil
import signal

import pytest

import _mp_worker as w
from conftest import tiny_config
from sglr_jax import checkpoints, history as history_lib
from sglr_jax.training import loop

TIME_KEYS = ('epoch_time_s', 'train_time_s')
SIGTERM_AFTER = 6  # global step: the 2nd of 4 in epoch 2


def _strip(history):
  return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in history]


def run_child(spec: dict, tmp: str):
  """Runs one ``_mp_worker`` job on one device to its end: ``(returncode, log path)``."""
  proc, log = w.start_job(spec, devices=1, tmp=tmp)
  try:
    return w.wait_all([proc], timeout=w.WAIT_S)[0], log
  finally:
    w.stop([proc])


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('uninterrupted'))
  return _strip(loop.train_and_evaluate(tiny_config(), wd, progress=False))


@pytest.fixture(scope='module')
def preempted(tmp_path_factory):
  """A run that receives SIGTERM after step SIGTERM_AFTER (sent by a hook of the run
  itself), and what it returned."""
  wd = str(tmp_path_factory.mktemp('preempted'))
  calls = []

  def sigterm_after(step):
    calls.append(step)
    if step == SIGTERM_AFTER:
      os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop's handler

  before = signal.getsignal(signal.SIGTERM)
  history = loop.train_and_evaluate(tiny_config(), wd, progress=False, hooks=[sigterm_after])
  assert signal.getsignal(signal.SIGTERM) is before  # the loop's handler is removed
  assert calls == list(range(1, SIGTERM_AFTER + 1))  # a hook call after every step
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
  history = loop.train_and_evaluate(tiny_config(), wd, progress=False)
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
  history = loop.train_and_evaluate(tiny_config(), wd, progress=False)
  assert 'checkpoint latest/6 is unreadable' in caplog.text
  assert 'resuming from checkpoint latest/4' in caplog.text
  assert _strip(history) == reference
  assert checkpoints.available(wd, 'latest') == [8, 12]  # the temporary directory is gone
  assert [n.split('-')[:2] for n in os.listdir(os.path.join(wd, 'checkpoints', 'corrupt'))] == [
      ['latest', '6']]


def test_sigkill_during_a_save_then_resume_matches(reference, tmp_path):
  """A child trains saving ``latest`` after every step and is killed with SIGKILL by
  itself inside the save of latest/6 (mid-epoch 2, epoch 1 logged): its files are in
  Orbax's temporary directory, not yet committed. The resume removes that directory,
  starts from the last complete checkpoint (latest/5) and logs the uninterrupted
  history."""
  wd = str(tmp_path / 'wd')
  spec = {'job': 'train', 'base': 'tiny', 'overrides': {'train.checkpoint_every_steps': 1},
          'workdir': wd, 'sigkill_in_save': 'latest/6'}
  rc, log = run_child(spec, str(tmp_path))
  assert rc == -signal.SIGKILL, w.tail(log)
  latest = os.path.join(wd, 'checkpoints', 'latest')
  left = sorted(os.listdir(latest))
  assert [n for n in left if n.isdigit()] == ['4', '5'], left
  assert [n.split('.')[0] for n in left if '.orbax-checkpoint-tmp' in n] == ['6'], left
  assert len(history_lib.read_history(wd)) == 1
  resumed = loop.train_and_evaluate(tiny_config(), wd, progress=False)
  assert _strip(resumed) == reference, left
  assert not any('.orbax-checkpoint-tmp' in n for n in os.listdir(latest))


# What JAX's cluster detection reads: cleared, so that 'auto' finds no cluster.
_CLUSTER_VARS = ('JAX_COORDINATOR_ADDRESS', 'SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS',
                 'SLURM_PROCID', 'SLURM_LOCALID', 'OMPI_MCA_orte_hnp_uri',
                 'KUBERNETES_SERVICE_HOST', 'TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES')


def test_sigterm_without_a_distributed_client_saves_in_every_process(tmp_path, monkeypatch):
  """Two processes of the command line side by side, neither joined by
  ``jax.distributed`` ('auto' finds no cluster: no client, no preemption service):
  each gets SIGTERM after its own train step (2 and 5, both mid-epoch), installs the Python handler,
  saves that mid-epoch checkpoint and exits 0."""
  for v in _CLUSTER_VARS:
    monkeypatch.delenv(v, raising=False)
  procs = []
  for i, at in enumerate((2, 5)):
    wd = str(tmp_path / f'wd{i}')
    spec = {'job': 'cli', 'sigterm_self': at,
            'argv': w.cli_flags() + [f'--workdir={wd}', '--progress=false', '--cpu_devices=1']}
    sub = tmp_path / f'p{i}'
    sub.mkdir()
    procs.append((w.start_job(spec, devices=1, tmp=str(sub)), wd, at))
  try:
    rcs = w.wait_all([p for (p, _), _, _ in procs], timeout=w.WAIT_S)
  finally:
    w.stop([p for (p, _), _, _ in procs])
  spe = w.MP_OVERRIDES['data.train_size'] // w.MP_OVERRIDES['train.batch_size']  # 3
  for rc, ((_, log), wd, at) in zip(rcs, procs):
    text = w.tail(log, 20000)
    assert rc == 0, text
    assert f'SIGTERM: saved checkpoint latest/{at}' in text, text
    assert checkpoints.available(wd, 'latest')[-1] == at
    progress = checkpoints.read_progress(wd, 'latest', at)
    assert (progress['epoch'], progress['step_in_epoch']) == (at // spe, at % spe)

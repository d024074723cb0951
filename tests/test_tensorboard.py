"""TensorBoard events: the history's numbers per epoch and StepLog's per-step scalars,
read back from the event files (TFRecord framing and CRC checked here, events parsed
with tensorboardX's protos), including what a resumed run's purge markers replace."""
from __future__ import annotations

import glob
import os
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from sglr_jax import history, tensorboard


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
  return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
  crc = _crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path):
  """The Event protos of one file: u64 length, masked CRC32C of it, data, its CRC."""
  out = []
  with open(path, 'rb') as f:
    blob = f.read()
  pos = 0
  while pos < len(blob):
    header = blob[pos:pos + 8]
    (n,), (crc,) = struct.unpack('<Q', header), struct.unpack('<I', blob[pos + 8:pos + 12])
    assert crc == _masked(header)
    body = blob[pos + 12:pos + 12 + n]
    (crc,) = struct.unpack('<I', blob[pos + 12 + n:pos + 16 + n])
    assert crc == _masked(body)
    out.append(event_pb2.Event.FromString(body))
    pos += 16 + n
  return out


def read_run(logdir):
  """{tag: {step: value}} as TensorBoard shows a run: files in name order, and a
  SessionLog.START at step s drops the values logged before it at steps >= s."""
  shown = {}
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    for e in read_events(path):
      if e.HasField('session_log') and e.session_log.status == event_pb2.SessionLog.START:
        for values in shown.values():
          for s in [s for s in values if s >= e.step]:
            del values[s]
      for v in e.summary.value:
        shown.setdefault(v.tag, {})[e.step] = v.simple_value
  return {k: v for k, v in shown.items() if v}


def test_crc32c_reference_value():
  assert _crc32c(b'123456789') == 0xE3069283  # the CRC-32C check value


def test_history_records_become_epoch_scalars(tmp_path):
  wd = str(tmp_path)
  history.append_history(wd, {'epoch': 1, 'lr': 0.1, 'train_loss': 2.5, 'train_adv_acc': 0.25,
                              'test_pgd20_acc': None, 'note': 'x', 'flag': True})
  history.append_history(wd, {'epoch': 2, 'lr': 0.1, 'train_loss': 1.75, 'train_adv_acc': 0.5,
                              'epoch_time_s': 3})
  logdir = os.path.join(wd, 'tensorboard', 'epoch')
  files = sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*')))
  assert len(files) == 2
  first = read_events(files[0])
  assert first[0].file_version == 'brain.Event:2'
  assert [e.step for e in first if e.HasField('session_log')] == [1]
  assert read_run(logdir) == {'lr': {1: pytest.approx(0.1), 2: pytest.approx(0.1)},
                              'train_loss': {1: 2.5, 2: 1.75},
                              'train_adv_acc': {1: 0.25, 2: 0.5}, 'epoch_time_s': {2: 3.0}}
  assert [r['epoch'] for r in history.read_history(wd)] == [1, 2]


def test_a_resumed_run_replaces_the_epochs_it_logs_again(tmp_path):
  wd = str(tmp_path)
  for epoch, loss in ((1, 3.0), (2, 2.0), (3, 1.0)):
    history.append_history(wd, {'epoch': epoch, 'train_loss': loss})
  history.truncate_history(wd, 1)  # resumed from the checkpoint of epoch 1
  history.append_history(wd, {'epoch': 2, 'train_loss': 2.25})
  shown = read_run(os.path.join(wd, 'tensorboard', 'epoch'))
  assert shown == {'train_loss': {1: 3.0, 2: 2.25}}  # epoch 3 waits to be logged again
  assert [r['train_loss'] for r in history.read_history(wd)] == [3.0, 2.25]


def test_events_can_be_left_out(tmp_path):
  history.append_history(str(tmp_path), {'epoch': 1, 'train_loss': 1.0}, events=False)
  assert os.listdir(tmp_path) == ['history.jsonl']


def _metrics(loss_sum, count):
  return {'loss_sum': np.float32(loss_sum), 'count': np.float32(count)}


def test_step_log_windows(tmp_path):
  wd = str(tmp_path)
  with tensorboard.StepLog(wd, first_step=10, global_batch=8, every=2, enabled=True) as log:
    for step, (loss_sum, count) in enumerate([(8, 8), (4, 8), (2, 8), (6, 8), (1, 4)], 11):
      log.add(step, _metrics(loss_sum, count))
  logdir = os.path.join(wd, 'tensorboard', 'step')
  (path,) = glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))
  assert [e.step for e in read_events(path) if e.HasField('session_log')] == [11]
  shown = read_run(logdir)
  # Windows end at steps 12, 14 and (closing) 15: loss per example over each window.
  assert shown['loss'] == {12: 0.75, 14: 0.5, 15: 0.25}
  # The first window (compilation) has no time; later ones: images/s x step time = batch.
  assert set(shown['step_time_s']) == set(shown['images_per_s']) == {14, 15}
  for s in (14, 15):
    assert shown['step_time_s'][s] > 0
    assert shown['images_per_s'][s] * shown['step_time_s'][s] == pytest.approx(8, rel=1e-5)


def test_step_log_restart_drops_nothing_written_and_resume_purges(tmp_path):
  wd = str(tmp_path)
  log = tensorboard.StepLog(wd, first_step=0, global_batch=4, every=10, enabled=True)
  for s in (1, 2, 3):
    log.add(s, _metrics(4 * s, 4))
  log.flush()  # end of an epoch: a partial window
  log.restart()
  log.add(4, _metrics(8, 4))
  log.close()
  log = tensorboard.StepLog(wd, first_step=3, global_batch=4, every=10, enabled=True)
  log.add(4, _metrics(2, 4))  # the resumed run logs step 4 again
  log.close()
  shown = read_run(os.path.join(wd, 'tensorboard', 'step'))
  assert shown['loss'] == {3: 2.0, 4: 0.5}


def test_disabled_step_log_writes_nothing(tmp_path):
  with tensorboard.StepLog(str(tmp_path), 0, 4, enabled=False) as log:
    log.add(1, _metrics(1, 4))
  assert os.listdir(tmp_path) == []

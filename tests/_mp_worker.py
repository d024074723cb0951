"""Helpers (and a subprocess entry point) for the multi-device, multi-process and
preemption tests.

  python tests/_mp_worker.py SPEC.json

runs one job described by the JSON spec in a fresh process, whose device count the
parent sets with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``:

  {"job": "steps", "overrides": {...}, "layouts": [...], "steps": 4, "save_at": 2,
   "ckpt": DIR, "out": NPZ}   # train steps directly, dump arrays, save/restore
  {"job": "train", "base": "tiny"|"mp", "overrides": {...}, "workdir": DIR}
                                          # train.train_and_evaluate

The helpers are shared by the parent test process, so both sides run the same
procedure.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (HERE, ROOT):
  if _p not in sys.path:
    sys.path.insert(0, _p)

# The multi-device tests' run: N = 126 training examples (not a multiple of 4, so
# the label table has padding rows that differ between 1, 2 and 4 devices), 3 steps
# of 32 per epoch, SGLR refining from the first step, 2 PGD steps.
MP_OVERRIDES = {
    'model.width': 8, 'data.train_size': 126, 'data.test_size': 64, 'train.batch_size': 32,
    'train.epochs': 2, 'schedule.decay_epochs': (1,), 'attack.steps': 2, 'eval.steps': 2,
    'eval.batch_size': 32, 'sglr.start_epoch': 0, 'train.train_fit_every_epochs': 0,
}


def config(**overrides):
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  return tiny_config('mnist_sglr', **{**MP_OVERRIDES, **overrides})


def cli_flags(**overrides) -> list[str]:
  """``--config.a.b=v`` flags giving run.py the same config as ``config(**overrides)``:
  every field where the tests' tiny config differs from configs/mnist_sglr.py."""
  import importlib  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  plain = dict(_flat(importlib.import_module('configs.mnist_sglr').get_config()))
  fields = {k: v for k, v in _flat(tiny_config('mnist_sglr')) if plain[k] != v}
  fields.update({**MP_OVERRIDES, **overrides})
  out = ['--config=configs/mnist_sglr.py']
  for k, v in fields.items():
    v = f'({",".join(map(str, v))}{"," if v else ""})' if isinstance(v, tuple) else v
    out.append(f'--config.{k}={v}')
  return out


def _flat(c, prefix=''):
  """``(dotted field, value)`` of a ConfigDict."""
  for k, v in c.items():
    if hasattr(v, 'items'):
      yield from _flat(v, f'{prefix}{k}.')
    else:
      yield prefix + k, v


def batches(s, start: int = 0):
  """The global batches of consecutive epochs, from step ``start`` on."""
  from sglr_jax import data  # pylint: disable=g-import-not-at-top
  c = s.config
  gen = itertools.chain.from_iterable(
      data.train_batches(s.ds, c.seed, e, c.train.batch_size) for e in itertools.count())
  return itertools.islice(gen, start, None)


def run_steps(s, st, n: int, start: int = 0, on_step=None):
  """``n`` train steps on ``st`` from global step ``start``; ``on_step(i, st)`` after each."""
  from sglr_jax import parallel  # pylint: disable=g-import-not-at-top
  from sglr_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
  step = steps_lib.make_train_step(s.model, s.step_config, s.mesh, st)
  losses = []
  for i, batch in enumerate(itertools.islice(batches(s, start), n), start + 1):
    st, m = step(st, parallel.to_global(batch, s.mesh))
    losses.append(float(m['loss_sum']) / float(m['count']))
    if on_step is not None:
      on_step(i, st)
  return st, losses


def arrays(st, prefix: str = '') -> dict:
  """Flat ``{name: numpy array}`` of parameters, BatchNorm statistics and the table."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  for part in ('params', 'batch_stats'):
    for path, leaf in jax.tree_util.tree_leaves_with_path(getattr(st, part)):
      out[prefix + part + jax.tree_util.keystr(path)] = np.asarray(leaf)
  out[prefix + 'label_table'] = np.asarray(st.label_table)
  return out


# ---------------------------------------------------------------- subprocesses


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def subprocess_env(devices: int) -> dict:
  """The parent's environment (compile flags, test compilation cache) with ``devices``
  simulated CPU devices; the cache is also passed as JAX_* variables for run.py."""
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  if devices > 1:  # (1: the parent's flags exactly, so its compilation cache serves)
    flags.append(f'--xla_force_host_platform_device_count={devices}')
  env['XLA_FLAGS'] = ' '.join(flags)
  env['JAX_PLATFORMS'] = 'cpu'
  cache = env.get('SGLR_TEST_JAX_CACHE')
  if cache:
    env['JAX_COMPILATION_CACHE_DIR'] = cache
    env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  env['PYTHONPATH'] = os.pathsep.join([ROOT, HERE, env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
  return env


def start(args: list[str], devices: int, log_path: str) -> subprocess.Popen:
  """A child in its own process group, output to ``log_path``."""
  log = open(log_path, 'w')  # pylint: disable=consider-using-with
  return subprocess.Popen([sys.executable] + args, cwd=ROOT, env=subprocess_env(devices),
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(procs):
  """Kills the children's process groups (after a timeout or a failure)."""
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
  for p in procs:
    try:
      p.wait(timeout=10)
    except subprocess.TimeoutExpired:
      pass


def wait_all(procs, timeout: float) -> list[int]:
  """Return codes, or kills every child and raises after ``timeout`` seconds."""
  deadline = time.time() + timeout
  try:
    return [p.wait(timeout=max(1.0, deadline - time.time())) for p in procs]
  except subprocess.TimeoutExpired as e:
    stop(procs)
    raise TimeoutError(f'children still running after {timeout:.0f}s') from e


def tail(path: str, n: int = 3000) -> str:
  try:
    with open(path, errors='replace') as f:
      return f.read()[-n:]
  except OSError:
    return ''


def start_job(spec: dict, devices: int, tmp: str) -> tuple[subprocess.Popen, str]:
  """Starts ``spec`` in a child with ``devices`` devices; returns it and its log path."""
  path = os.path.join(tmp, f'spec_{spec["job"]}.json')
  with open(path, 'w') as f:
    json.dump(spec, f)
  log = os.path.join(tmp, f'log_{spec["job"]}.txt')
  return start([os.path.join(HERE, '_mp_worker.py'), path], devices, log), log


def finish_job(proc: subprocess.Popen, log: str, timeout: float = 300) -> None:
  """Waits for a child of ``start_job``; raises with its log unless it exited with 0."""
  rc = wait_all([proc], timeout)[0]
  if rc != 0:
    raise RuntimeError(f'worker exited with {rc}:\n{tail(log)}')


# ---------------------------------------------------------------- jobs


def _job_steps(spec):
  """Train ``steps`` steps for each layout on all devices; for the first layout, save
  a checkpoint after ``save_at`` steps and restore it on a 2-device mesh."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sglr_jax import checkpoints, train  # pylint: disable=g-import-not-at-top
  out = {}
  for n, layout in enumerate(spec['layouts']):
    s = train.build(config(**spec['overrides'], **{'sglr.table_sharding': layout}))
    st = train.initial_state(s)

    def save(i, st, first=(n == 0)):
      if first and spec.get('ckpt') and i == spec['save_at']:
        checkpoints.save(spec['ckpt'], 'latest', st, i)
        out.update(arrays(st, 'saved/'))

    st, losses = run_steps(s, st, spec['steps'], on_step=save)
    out.update(arrays(st, f'{layout}/'))
    out[f'{layout}/losses'] = np.asarray(losses)
  if spec.get('ckpt'):
    for layout in ('replicated', 'sharded'):
      s = train.build(config(**spec['overrides'], **{'sglr.table_sharding': layout,
                                                     'parallel.num_devices': 2}))
      target = train.initial_state(s)
      st, key = checkpoints.restore(spec['ckpt'], 'latest', target)
      assert key == spec['save_at'] and int(st.step) == key, (key, int(st.step))
      assert st.label_table.sharding == target.label_table.sharding
      out.update(arrays(st, f'restored2_{layout}/'))
  np.savez(spec['out'], **out)


def _job_train(spec):
  """``train_and_evaluate`` on ``tiny_config(**overrides)`` (base 'tiny') or
  ``config(**overrides)`` (base 'mp')."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from sglr_jax import train  # pylint: disable=g-import-not-at-top
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in spec['overrides'].items()}
  c = tiny_config(**overrides) if spec.get('base') == 'tiny' else config(**overrides)
  train.train_and_evaluate(c, spec['workdir'], progress=False)


def main(argv):
  with open(argv[1]) as f:
    spec = json.load(f)
  import conftest  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (compile cache)
  {'steps': _job_steps, 'train': _job_train}[spec['job']](spec)


if __name__ == '__main__':
  main(sys.argv)


def launch_run_py(flags: list[str], tmp: str, name: str, processes: int = 2,
                  devices_per_process: int = 2, timeout: float = 300, on_poll=None,
                  retries: int = 1) -> list[str]:
  """Runs ``run.py`` as ``processes`` local processes joined by ``jax.distributed`` on a
  free 127.0.0.1 port (gloo CPU collectives), ``devices_per_process`` devices each.

  ``on_poll(procs)`` is called every 10 ms while they run (to signal them). Returns
  the log paths; raises (after killing them all) on a timeout or a non-zero exit.
  A start that fails in gloo's 30 s connection window (processes more than 30 s
  apart on a very busy host) is retried ``retries`` times on a new port.
  """
  for attempt in range(retries + 1):
    port = free_port()
    procs, logs = [], []
    try:
      for pid in range(processes):
        logs.append(os.path.join(tmp, f'{name}_{attempt}_p{pid}.txt'))
        procs.append(start(
            [os.path.join(ROOT, 'run.py'), '--progress=false'] + flags + [
                f'--config.distributed.coordinator_address=127.0.0.1:{port}',
                f'--config.distributed.num_processes={processes}',
                f'--config.distributed.process_id={pid}'],
            devices_per_process, logs[-1]))
      deadline = time.time() + timeout
      while time.time() < deadline and any(p.poll() is None for p in procs):
        if on_poll is not None:
          on_poll(procs)
        time.sleep(0.01)
      if any(p.poll() is None for p in procs):
        raise TimeoutError(f'run.py processes still running after {timeout:.0f}s:\n'
                           + '\n'.join(tail(l, 1500) for l in logs))
    finally:
      stop(procs)
    rcs = [p.returncode for p in procs]
    if all(rc == 0 for rc in rcs):
      return logs
    text = '\n'.join(tail(l) for l in logs)
    if attempt < retries and 'Gloo context initialization failed' in text:
      print(f'{name}: gloo could not connect the processes in time; retrying once')
      continue
    raise RuntimeError(f'{name}: return codes {rcs}\n{text}')
  raise AssertionError('unreachable')

"""Helpers (and a subprocess entry point) for the multi-device, multi-process and
preemption tests.

  python tests/_mp_worker.py SPEC.json

runs one job described by the JSON spec in a fresh process, whose device count the
parent sets with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``:

  {"job": "steps", "overrides": {...}, "layouts": [...], "steps": 4, "save_at": 2,
   "ckpt": DIR, "out": NPZ}   # train steps directly, dump arrays, save/restore
  {"job": "train", "base": "tiny"|"mp", "overrides": {...}, "workdir": DIR,
   "sigkill_in_save": "latest/6"}    # training.loop.train_and_evaluate (optionally
                                     # SIGKILLed inside the save of that checkpoint)
  {"job": "cli", "argv": [...], "sigterm": [PROCESS, STEP]}
                                     # the command line (run.py), with SIGTERM to
                                     # process PROCESS after its train step STEP
  {"job": "cli", "argv": [...], "sigterm_self": STEP}
                                     # the same, SIGTERM to this process after STEP
                                     # (no jax.distributed client needed)

The helpers are shared by the parent test process, so both sides run the same
procedure. Every event a test waits for is raised by the run itself at a chosen step
(a training hook) or a chosen point of a save, never by a timer.
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
# The keys XLA's preemption sync protocol (xla/tsl/distributed_runtime/preemption/
# preemption_sync_manager.cc) writes each process's step count under.
PREEMPTION_COUNTERS = 'PREEMPTION_CURRENT_COUNTER/'
WAIT_S = 300  # bounds the waits below (they only prevent hangs; nothing is timed)

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
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from sglr_jax.configs import mnist_sglr  # pylint: disable=g-import-not-at-top
  plain = dict(_flat(mnist_sglr.get_config()))
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


def batches(exp, start: int = 0):
  """The global batches of consecutive epochs, from step ``start`` on."""
  from sglr_jax import data  # pylint: disable=g-import-not-at-top
  gen = itertools.chain.from_iterable(
      data.train_batches(exp.ds, exp.seed, e, exp.train.batch_size) for e in itertools.count())
  return itertools.islice(gen, start, None)


def run_steps(exp, st, n: int, start: int = 0, on_step=None):
  """``n`` train steps on ``st`` from global step ``start``; ``on_step(i, st)`` after each."""
  from sglr_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from sglr_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  step = step_lib.make_train_step(exp.model, exp.step, exp.mesh, st, ops=exp.attack_ops)
  losses = []
  for i, batch in enumerate(itertools.islice(batches(exp, start), n), start + 1):
    st, m = step(st, mesh_lib.to_global(batch, exp.mesh))
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
  from sglr_jax import checkpoints, experiment  # pylint: disable=g-import-not-at-top
  out = {}
  for n, layout in enumerate(spec['layouts']):
    exp = experiment.build(config(**spec['overrides'], **{'sglr.table_sharding': layout}))
    st = experiment.initial_state(exp)

    def save(i, st, first=(n == 0)):
      if first and spec.get('ckpt') and i == spec['save_at']:
        checkpoints.save(spec['ckpt'], 'latest', st, i)
        out.update(arrays(st, 'saved/'))

    st, losses = run_steps(exp, st, spec['steps'], on_step=save)
    out.update(arrays(st, f'{layout}/'))
    out[f'{layout}/losses'] = np.asarray(losses)
  if spec.get('ckpt'):
    for layout in ('replicated', 'sharded'):
      exp = experiment.build(config(**spec['overrides'], **{'sglr.table_sharding': layout,
                                                            'parallel.num_devices': 2}))
      target = experiment.initial_state(exp)
      st, key = checkpoints.restore(spec['ckpt'], 'latest', target)
      assert key == spec['save_at'] and int(st.step) == key, (key, int(st.step))
      assert st.label_table.sharding == target.label_table.sharding
      out.update(arrays(st, f'restored2_{layout}/'))
  np.savez(spec['out'], **out)


def kill_inside_save(checkpoint: str):
  """SIGKILLs this process inside the save of ``checkpoint`` (e.g. 'latest/6'): after
  Orbax's handler wrote its files into the temporary directory, before the commit
  (the rename that makes the checkpoint visible). A checkpoint made as links to another
  one ('best' / 'final' of an epoch end) dies after its files are linked into the
  temporary directory, before that directory is renamed into place."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from sglr_jax import checkpoints  # pylint: disable=g-import-not-at-top
  handler_save = ocp.CompositeCheckpointHandler.save
  handler_async_save = ocp.CompositeCheckpointHandler.async_save
  link_tree = checkpoints._link_tree  # pylint: disable=protected-access

  def kill_if(directory):
    if f'/{checkpoint}.orbax-checkpoint-tmp' in str(directory):
      os.kill(os.getpid(), signal.SIGKILL)

  def save(self, directory, *args, **kwargs):
    out = handler_save(self, directory, *args, **kwargs)
    kill_if(directory)
    return out

  async def async_save(self, directory, *args, **kwargs):  # an asynchronous save
    futures = await handler_async_save(self, directory, *args, **kwargs)
    for f in futures or ():
      f.result()  # its files are written
    kill_if(directory)
    return futures

  def link(src, root, key):
    if os.path.join(root, str(key)).endswith('/' + checkpoint):
      checkpoints.os.replace = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
    return link_tree(src, root, key)

  ocp.CompositeCheckpointHandler.save = save
  ocp.CompositeCheckpointHandler.async_save = async_save
  checkpoints._link_tree = link  # pylint: disable=protected-access


def _job_train(spec):
  """``train_and_evaluate`` on ``tiny_config(**overrides)`` (base 'tiny') or
  ``config(**overrides)`` (base 'mp')."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from sglr_jax.training import loop  # pylint: disable=g-import-not-at-top
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in spec['overrides'].items()}
  c = tiny_config(**overrides) if spec.get('base') == 'tiny' else config(**overrides)
  if spec.get('sigkill_in_save'):
    kill_inside_save(spec['sigkill_in_save'])
  loop.train_and_evaluate(c, spec['workdir'], progress=False)


def sigterm_hook(process: int, at_step: int):
  """A training hook: after train step ``at_step``, process ``process`` sends itself
  SIGTERM (JAX's preemption service owns the signal under ``jax.distributed``); then
  every process waits until the service's sync protocol has collected the step count
  of every process. Each process is then still at step ``at_step - 1`` for the
  protocol (the loop checks the sync point after its hooks), so all of them stop at
  ``at_step`` and save that checkpoint, however late the notice travels."""

  def hook(step: int):
    if step != at_step:
      return
    import jax  # pylint: disable=g-import-not-at-top
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    if jax.process_index() == process:
      os.kill(os.getpid(), signal.SIGTERM)
    client = ocp.multihost.get_jax_distributed_client()
    deadline = time.time() + WAIT_S
    while len(client.key_value_dir_get(PREEMPTION_COUNTERS)) < jax.process_count():
      if time.time() > deadline:
        raise RuntimeError(f'no preemption step counts under {PREEMPTION_COUNTERS!r} after '
                           f'{WAIT_S} s: has XLA\'s preemption sync protocol changed?')
      time.sleep(0.01)

  return hook


def _job_cli(spec):
  """The command line (as ``python run.py ARGV``), with ``sigterm_hook`` added to the
  training loop's hooks. Imports nothing before it but the package, as run.py."""
  import functools  # pylint: disable=g-import-not-at-top
  from sglr_jax import cli  # pylint: disable=g-import-not-at-top
  from sglr_jax.training import loop  # pylint: disable=g-import-not-at-top
  if spec.get('sigterm'):
    loop.train_and_evaluate = functools.partial(loop.train_and_evaluate,
                                                hooks=[sigterm_hook(*spec['sigterm'])])
  if spec.get('sigterm_self'):
    at = int(spec['sigterm_self'])
    hook = lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == at else None
    loop.train_and_evaluate = functools.partial(loop.train_and_evaluate, hooks=[hook])
  sys.argv = [os.path.join(ROOT, 'run.py')] + spec['argv']
  cli.main()


def main(argv):
  with open(argv[1]) as f:
    spec = json.load(f)
  if spec['job'] == 'cli':  # no test setup: the environment is run.py's
    _job_cli(spec)
    return
  import conftest  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (compile cache)
  {'steps': _job_steps, 'train': _job_train}[spec['job']](spec)


if __name__ == '__main__':
  main(sys.argv)


def launch_run_py(flags: list[str], tmp: str, name: str, processes: int = 2,
                  devices_per_process: int = 2, timeout: float = 300, sigterm=None,
                  retries: int = 1) -> list[str]:
  """Runs ``run.py`` as ``processes`` local processes joined by ``jax.distributed`` on a
  free 127.0.0.1 port (gloo CPU collectives), ``devices_per_process`` devices each.

  ``sigterm=(process, step)``: that process gets SIGTERM after that train step (the
  ``cli`` job's ``sigterm_hook``). Returns the log paths; raises (after killing them
  all) on a timeout or a non-zero exit. A start that fails in gloo's 30 s connection
  window (processes more than 30 s apart on a very busy host) is retried ``retries``
  times on a new port.
  """
  for attempt in range(retries + 1):
    port = free_port()
    procs, logs = [], []
    try:
      for pid in range(processes):
        argv = ['--progress=false'] + flags + [
            f'--config.distributed.coordinator_address=127.0.0.1:{port}',
            f'--config.distributed.num_processes={processes}',
            f'--config.distributed.process_id={pid}']
        logs.append(os.path.join(tmp, f'{name}_{attempt}_p{pid}.txt'))
        if sigterm is None:
          args = [os.path.join(ROOT, 'run.py')] + argv
        else:
          path = os.path.join(tmp, f'{name}_{attempt}_p{pid}.json')
          with open(path, 'w') as f:
            json.dump({'job': 'cli', 'argv': argv, 'sigterm': list(sigterm)}, f)
          args = [os.path.join(HERE, '_mp_worker.py'), path]
        procs.append(start(args, devices_per_process, logs[-1]))
      wait_all(procs, timeout)
    except TimeoutError as e:
      raise TimeoutError(f'{e}:\n' + '\n'.join(tail(l, 1500) for l in logs)) from e
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

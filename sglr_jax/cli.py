"""The command line: train, evaluate or report on a workdir (``sglr-jax`` and ``run.py``).

  sglr-jax --config=configs/mnist_sglr.py --workdir=runs/mnist_sglr
  sglr-jax --config=configs/mnist_sglr.py --workdir=runs/mnist_sglr --mode=eval
  sglr-jax --config=configs/mnist_sglr.py --workdir=runs/mnist_sglr --config.train.epochs=5

Exit status: 0 done; 2 an error the user can fix (``errors.UserError``, a bad flag or
config file, a full disk: one line on stderr); 3 training diverged (a non-finite loss
or gradient norm; the last good checkpoint is kept).
Process setup (XLA host devices on CPU, ``jax.distributed``, the persistent compilation
cache) happens here, before anything else imports jax or compiles; everything else is
built from the config by ``experiment.build``.
"""
from __future__ import annotations

import errno
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sglr_jax import errors

FLAGS = flags.FLAGS
MODES = ('train', 'eval', 'report')


def define_flags(flag_values, argv):
  """Defines the command line on ``flag_values``. ``--config.a.b=v`` overrides are
  registered from ``argv`` (ml_collections reads them at definition time)."""
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, history and results.',
                      flag_values=flag_values)
  flags.DEFINE_enum('mode', 'train', list(MODES),
                    'train (resumes if the workdir has checkpoints), eval (best and final '
                    'checkpoints), report (figures and tables of --workdir and --compare).',
                    flag_values=flag_values)
  flags.DEFINE_list('compare', [], 'report: more workdirs to put beside --workdir.',
                    flag_values=flag_values)
  flags.DEFINE_bool('progress', True, 'Show progress bars.', flag_values=flag_values)
  flags.DEFINE_integer('cpu_devices', -1,
                       'CPU only: run the (data,) mesh over N XLA host devices, one per '
                       'core (-1 = auto: the cores, at most 8, dividing the batch sizes; '
                       '1 = one device).', flag_values=flag_values)


def run_argv(argv, progress=True):
  """Parses ``argv`` (``['run.py', '--config=...', ...]``) on fresh flag values and
  runs it in this process; raises on errors (tests call this)."""
  fv = flags.FlagValues()
  define_flags(fv, argv)
  fv(argv)
  run(fv, progress=progress)


def run(fv, progress=True):
  """Runs the mode with the parsed flag values ``fv``; raises on errors."""
  config, workdir, mode = fv.config, fv.workdir, fv.mode
  if not workdir:
    raise errors.UserError('--workdir is required')
  from sglr_jax import storage  # pylint: disable=g-import-not-at-top
  for path in [workdir] + list(fv.compare):  # gs:// needs gcsfs: one line, before any work
    storage.check_url_support(path)
  if mode == 'report':
    from sglr_jax import report  # pylint: disable=g-import-not-at-top
    paths = report.make_report([workdir] + list(fv.compare), storage.join(workdir, 'report'))
    print('\n'.join(paths))
    return
  if config is None:
    raise errors.UserError('--config is required, e.g. --config=configs/mnist_sglr.py')
  # pylint: disable-next=g-import-not-at-top
  from sglr_jax import compile_cache, distributed, experiment
  distributed.maybe_initialize(experiment.distributed_params(config))
  compile_cache.configure(str(config.parallel.get('compilation_cache_dir', '')))
  if mode == 'train':
    from sglr_jax.training import loop, summary  # pylint: disable=g-import-not-at-top
    hist = loop.train_and_evaluate(config, workdir, progress=progress)
    print(summary.closing_line(hist, workdir))
  else:
    from sglr_jax.evaluation import evaluate, results  # pylint: disable=g-import-not-at-top
    res = evaluate.evaluate(config, workdir, progress=progress)
    print(results.markdown_table(res, title=storage.basename(workdir)))


def _disk_full(e: BaseException):
  """The ENOSPC / EDQUOT error in ``e``'s chain (Orbax wraps its writers' errors), or None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return e
    if 'No space left on device' in str(e) or 'Disk quota exceeded' in str(e):
      return e
    e = e.__cause__ or e.__context__
  return None


def _quiet_disk_full_thread_errors() -> None:
  """Drops the ERROR records (with tracebacks) that Orbax's writer threads log for a
  full disk: the same error reaches ``_main``, which reports it in one line."""

  def keep(record) -> bool:
    if record.levelno < std_logging.ERROR:
      return True
    exc = record.exc_info[1] if record.exc_info else None
    return _disk_full(exc or RuntimeError(record.getMessage())) is None

  logging.get_absl_logger().addFilter(keep)


def _configure_cpu_devices(requested: int, config) -> None:
  """XLA:CPU process setup, read from the config before jax starts (XLA_FLAGS is read
  once, when jax initialises its backends)."""
  from sglr_jax.platforms.xla_cpu import host_devices  # pylint: disable=g-import-not-at-top
  distributed = (str(config.distributed.enabled).lower() == 'true'
                 or bool(config.distributed.coordinator_address)
                 or bool(os.environ.get('JAX_COORDINATOR_ADDRESS')))
  try:
    host_devices.configure(
        requested, batch_sizes=(int(config.train.batch_size), int(config.eval.batch_size)),
        model_name=str(config.model.name), cpu_convs=str(config.parallel.get('cpu_convs', 'auto')),
        distributed=distributed)
  except ValueError as e:
    raise errors.UserError(str(e)) from e


def _main(argv):
  del argv
  _quiet_disk_full_thread_errors()
  try:
    if FLAGS.config is not None:  # before anything imports jax
      _configure_cpu_devices(FLAGS.cpu_devices, FLAGS.config)
    run(FLAGS, progress=FLAGS.progress)
  except errors.UserError as e:
    _exit(f'error: {e}', 2)
  except Exception as e:  # pylint: disable=broad-except
    status = getattr(e, 'exit_status', None)  # e.g. training.loop.NonFiniteError: 3
    if status:
      _exit(f'error: {e}', status)
    full = _disk_full(e)
    if full is None:
      raise
    where = getattr(full, 'filename', None) or FLAGS.workdir
    _exit(f'error: no space left on the disk of {where} ({full.__class__.__name__}); the last '
          'complete checkpoint is kept: free space and run the same command again', 2)


def _exit(line: str, status: int):
  """Prints one line and ends the process now (os._exit: Orbax's background threads
  would print pages of tracebacks on a normal interpreter shutdown after a failed save)."""
  print(line.splitlines()[0] if line else line, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(status)  # pylint: disable=protected-access


def _parse_flags(argv):
  """absl's flag parsing, with a bad flag, override or config file as one line, status 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _exit(f'error: {" ".join(str(e).split())}', 2)
  except Exception as e:  # pylint: disable=broad-except  # a config file or override that fails
    text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    text = text.strip('\'"').replace('\\n', ' ').replace("\\'", "'")  # a KeyError's repr
    _exit(f'error: --config: {type(e).__name__}: {" ".join(text.split())}', 2)


def _check_config_path(argv):
  """A missing config file is named in one line, not an absl traceback."""
  for arg in argv[1:]:
    if arg.startswith('--config='):
      path = arg.split('=', 1)[1].split(':', 1)[0]
      if not os.path.isfile(path):
        _exit(f'error: --config={path}: no such file; the configs are in configs/', 2)


def main():
  """Console entry point (``sglr-jax``) and ``python run.py``."""
  _check_config_path(sys.argv)
  define_flags(FLAGS, sys.argv)
  logging.set_verbosity(logging.WARNING)
  app.run(_main, flags_parser=_parse_flags)

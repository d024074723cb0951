"""The command line: train, evaluate or report on a workdir (``sglr-jax`` and ``run.py``).

  sglr-jax --config=configs/mnist_sglr.py --workdir=runs/mnist_sglr
  sglr-jax --config=configs/mnist_sglr.py --workdir=runs/mnist_sglr --mode=eval
  sglr-jax --config=configs/mnist_sglr.py --workdir=runs/mnist_sglr --config.train.epochs=5

Errors a user can fix (``errors.UserError``) end in one line on stderr, exit status 2.
Process setup (XLA host devices on CPU, ``jax.distributed``) happens here, before anything
else imports jax; everything else is built from the config by ``experiment.build``.
"""
from __future__ import annotations

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
  if mode == 'report':
    from sglr_jax import report  # pylint: disable=g-import-not-at-top
    paths = report.make_report([workdir] + list(fv.compare), os.path.join(workdir, 'report'))
    print('\n'.join(paths))
    return
  if config is None:
    raise errors.UserError('--config is required, e.g. --config=configs/mnist_sglr.py')
  from sglr_jax import distributed, experiment  # pylint: disable=g-import-not-at-top
  distributed.maybe_initialize(experiment.distributed_params(config))
  if mode == 'train':
    from sglr_jax.training import loop  # pylint: disable=g-import-not-at-top
    loop.train_and_evaluate(config, workdir, progress=progress)
  else:
    from sglr_jax.evaluation import evaluate, results  # pylint: disable=g-import-not-at-top
    res = evaluate.evaluate(config, workdir, progress=progress)
    print(results.markdown_table(res, title=os.path.basename(os.path.normpath(workdir))))


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
  try:
    if FLAGS.config is not None:  # before anything imports jax
      _configure_cpu_devices(FLAGS.cpu_devices, FLAGS.config)
    run(FLAGS, progress=FLAGS.progress)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def _check_config_path(argv):
  """A missing config file is named in one line, not an absl traceback."""
  for arg in argv[1:]:
    if arg.startswith('--config='):
      path = arg.split('=', 1)[1].split(':', 1)[0]
      if not os.path.isfile(path):
        print(f'error: --config={path}: no such file; the configs are in configs/',
              file=sys.stderr)
        sys.exit(2)


def main():
  """Console entry point (``sglr-jax``) and ``python run.py``."""
  _check_config_path(sys.argv)
  define_flags(FLAGS, sys.argv)
  logging.set_verbosity(logging.WARNING)
  app.run(_main)

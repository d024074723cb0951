"""sglr_jax command line: train, evaluate or report on a workdir.

  python run.py --config=configs/mnist_sglr.py --workdir=runs/mnist_sglr
  python run.py --config=configs/mnist_sglr.py --workdir=runs/mnist_sglr --mode=eval
  python run.py --config=configs/mnist_sglr.py --workdir=runs/mnist_sglr --config.train.epochs=5

Bad configs and inputs end in one line on stderr naming the field, exit status 2.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags(flag_values, argv):
  """Defines the command line on ``flag_values``. ``--config.a.b=v`` overrides are
  registered from ``argv`` (ml_collections reads them at definition time)."""
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, history and results.',
                      flag_values=flag_values)
  flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'report'],
                    'train (resumes if the workdir has checkpoints), eval (best and final '
                    'checkpoints), report (figures and tables of --workdir and --compare).',
                    flag_values=flag_values)
  flags.DEFINE_list('compare', [], 'report: more workdirs to put beside --workdir.',
                    flag_values=flag_values)
  flags.DEFINE_bool('progress', True, 'Show progress bars.', flag_values=flag_values)
  flags.DEFINE_integer('cpu_devices', -1,
                       'CPU only: run the (data,) mesh over N XLA host devices, one per '
                       'core (-1 = auto: the cores, at most 8, dividing the batch sizes; '
                       '1 = one device). See sglr_jax/host_devices.py.',
                       flag_values=flag_values)


def run_argv(argv, progress=True):
  """Parses ``argv`` (``['run.py', '--config=...', ...]``) on fresh flag values and
  runs it in this process; raises on errors (tests call this)."""
  fv = flags.FlagValues()
  define_flags(fv, argv)
  fv(argv)
  run(fv, progress=progress)


class UserError(Exception):
  """An error the user can fix; printed as one line."""


def run(fv, progress=True):
  """Runs the mode with the parsed flag values ``fv``; raises on errors."""
  from sglr_jax import parallel  # pylint: disable=g-import-not-at-top
  config, workdir, mode = fv.config, fv.workdir, fv.mode
  if not workdir:
    raise UserError('--workdir is required')
  if mode == 'report':
    from sglr_jax import report  # pylint: disable=g-import-not-at-top
    paths = report.make_report([workdir] + list(fv.compare), os.path.join(workdir, 'report'))
    print('\n'.join(paths))
    return
  if config is None:
    raise UserError('--config is required, e.g. --config=configs/mnist_sglr.py')
  parallel.maybe_initialize_distributed(config.distributed)
  if mode == 'train':
    from sglr_jax import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(config, workdir, progress=progress)
  else:
    from sglr_jax import evaluate  # pylint: disable=g-import-not-at-top
    results = evaluate.evaluate(config, workdir, progress=progress)
    print(evaluate.markdown_table(results, title=os.path.basename(os.path.normpath(workdir))))


def main(argv):
  from sglr_jax import host_devices  # pylint: disable=g-import-not-at-top  (no jax)
  if FLAGS.config is not None:  # before anything imports jax
    try:
      host_devices.configure(FLAGS.cpu_devices, FLAGS.config)
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
  from sglr_jax import checkpoints, config_check  # pylint: disable=g-import-not-at-top
  user_errors = [UserError, config_check.ConfigError, checkpoints.NoCheckpointError]
  try:
    from sglr_jax import tfds_data  # pylint: disable=g-import-not-at-top
    user_errors.append(tfds_data.DatasetNotPreparedError)
  except ImportError:
    pass
  try:
    del argv
    run(FLAGS, progress=FLAGS.progress)
  except tuple(user_errors) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def _check_config_path():
  """A missing config file is named in one line, not an absl traceback."""
  for arg in sys.argv[1:]:
    if arg.startswith('--config='):
      path = arg.split('=', 1)[1].split(':', 1)[0]
      if not os.path.isfile(path):
        print(f'error: --config={path}: no such file; the configs are in configs/', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
  _check_config_path()
  define_flags(FLAGS, sys.argv)
  logging.set_verbosity(logging.WARNING)
  app.run(main)

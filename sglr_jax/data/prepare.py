"""Downloads and prepares a CIFAR dataset without training: ``python -m sglr_jax.data.prepare``.

  python -m sglr_jax.data.prepare cifar100 --data_dir=DIR

For clusters whose compute nodes have no network access: run this on a node that has
it (a login node), with the ``data.data_dir`` the training runs will use. The result is
the array_record copy ``tfds build NAME --file_format=array_record`` writes (see
``cifar_prepare``); ``DIR/NAME`` can also be copied to another data dir. Errors a user
can fix end in one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from sglr_jax import errors


class _Parser(argparse.ArgumentParser):
  """argparse whose usage errors are one line (exit 2), as the other user errors."""

  def error(self, message):
    self.exit(2, f'error: {message} (see --help)\n')


def _parser() -> argparse.ArgumentParser:
  from sglr_jax.data import cifar_prepare  # pylint: disable=g-import-not-at-top
  p = _Parser(prog='python -m sglr_jax.data.prepare',
              description='Download CIFAR-10/100 and write the tfds array_record copy '
              'that data.data_dir points to (no TensorFlow needed).')
  p.add_argument('name', choices=cifar_prepare.DATASETS)
  p.add_argument('--data_dir', default='',
                 help='tfds data dir to write NAME/VERSION into (default: tfds\'s, '
                 'TFDS_DATA_DIR or ~/tensorflow_datasets)')
  p.add_argument('--url', default='',
                 help='download from this mirror instead (default: the official archive, '
                 'or $SGLR_JAX_<NAME>_URL)')
  p.add_argument('--sha256', default='',
                 help='expected sha256 of what --url serves (default: the official '
                 'archive\'s, or $SGLR_JAX_<NAME>_SHA256)')
  p.add_argument('--lock_timeout', type=float, default=3600.0,
                 help='seconds to wait for another process preparing the same data dir')
  p.add_argument('--no_progress', dest='progress', action='store_false',
                 help='no progress bars')
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from sglr_jax.data import cifar_prepare  # pylint: disable=g-import-not-at-top
  try:
    path = cifar_prepare.prepare(args.name, args.data_dir or None, url=args.url or None,
                                 sha256=args.sha256 or None, progress=args.progress,
                                 lock_timeout_s=args.lock_timeout)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('error: interrupted (nothing was prepared; a new run resumes the download)',
          file=sys.stderr)
    return 130
  print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())

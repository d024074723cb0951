"""sglr_jax command line (the same as the installed ``sglr-jax`` console script).

  python run.py --config=configs/mnist_sglr.py --workdir=runs/mnist_sglr
  python run.py --config=configs/mnist_sglr.py --workdir=runs/mnist_sglr --mode=eval

See ``sglr_jax/cli.py`` for the flags.
"""
from sglr_jax import cli

if __name__ == '__main__':
  cli.main()

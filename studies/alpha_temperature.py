"""Study 3: the alpha / temperature sweep of paper Tab. 4 at small scale (packaged
MNIST, default small CNN, 20 epochs): alpha in {0, 0.2, 0.5, 0.8} at T = 1 and
T in {1.5, 2} at alpha = 0.2, three seeds each (18 runs). alpha = 0 is plain PGD-AT. A
seed sets the initialisation and the data order, shared by every setting of that seed,
so each setting is compared with alpha = 0 seed by seed (docs/RESULTS.md).

  python studies/alpha_temperature.py [--seeds 0,1,2] [--out DIR] [--mini] [--list]
"""
import common
from common import parse_args, run_study

SETTINGS = [(a, 1.0) for a in (0.0, 0.2, 0.5, 0.8)] + [(0.2, t) for t in (1.5, 2.0)]


def main():
  seeds = [int(s) for s in common.take_option('--seeds', '0,1,2').split(',')]
  args = parse_args(__doc__, 'alpha_temperature')
  runs = [(f'alpha {a:g} T {t:g} seed {seed}', 'mnist_sglr',
           {'seed': seed, 'sglr.alpha': a, 'sglr.temperature': t})
          for seed in seeds for a, t in SETTINGS]
  run_study('alpha / temperature', runs, args)


if __name__ == '__main__':
  main()

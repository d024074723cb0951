"""Study 3: the alpha / temperature sweep of paper Tab. 4 at small scale (packaged
MNIST, default small CNN, 20 epochs): alpha in {0, 0.2, 0.5, 0.8} at T = 1 and
T in {1.5, 2} at alpha = 0.2. alpha = 0 is plain PGD-AT. Six runs.

  python studies/alpha_temperature.py [--out DIR] [--mini]
"""
from common import parse_args, run_study


def main():
  args = parse_args(__doc__, 'alpha_temperature')
  runs = [(f'alpha {a:g} T 1', 'mnist_sglr', {'sglr.alpha': a, 'sglr.temperature': 1.0})
          for a in (0.0, 0.2, 0.5, 0.8)]
  runs += [(f'alpha 0.2 T {t:g}', 'mnist_sglr', {'sglr.alpha': 0.2, 'sglr.temperature': t})
           for t in (1.5, 2.0)]
  run_study('alpha / temperature', runs, args)


if __name__ == '__main__':
  main()

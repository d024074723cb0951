"""Study 4: TRADES vs TRADES + SGLR on the packaged MNIST (default small CNN, 20
epochs, beta 6, eps 0.1).

  python studies/trades.py [--out DIR] [--mini]
"""
from common import parse_args, run_study


def main():
  args = parse_args(__doc__, 'trades')
  runs = [('TRADES', 'mnist_at', {'objective.name': 'trades'}),
          ('TRADES + SGLR', 'mnist_sglr', {'objective.name': 'trades'})]
  run_study('TRADES', runs, args)


if __name__ == '__main__':
  main()

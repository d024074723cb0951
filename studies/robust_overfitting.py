"""Study 1: robust overfitting and its cure on the packaged MNIST.

PGD-AT vs PGD-AT + LS vs PGD-AT + SGLR with the small CNN widened to a 1024-unit dense
layer, 40 epochs, lr decayed after epochs 20 and 30 (10 epochs after the last decay),
eps 0.1, clean labels.

  python studies/robust_overfitting.py [--out DIR] [--mini]
"""
from common import parse_args, run_study

WIDE = {'model.dense': 1024, 'train.epochs': 40,
        'schedule.decay_epochs': (20, 30)}


def main():
  args = parse_args(__doc__, 'robust_overfitting')
  runs = [
      ('PGD-AT', 'mnist_at', WIDE),
      ('PGD-AT + LS', 'mnist_at', dict(WIDE, **{'objective.name': 'ls', 'objective.ls_eps': 0.1})),
      ('PGD-AT + SGLR', 'mnist_sglr', dict(WIDE, **{'sglr.start_epoch': 4})),
  ]
  run_study('robust overfitting', runs, args)


if __name__ == '__main__':
  main()

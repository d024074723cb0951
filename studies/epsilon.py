"""Study 8: the perturbation radius (paper Sec. B.3: larger perturbations bring robust
overfitting, small ones hardly do).

Clean labels, the main job's net and schedule (small CNN with BatchNorm, 20 epochs, lr
0.1 decayed x0.1 after epochs 10 and 15), PGD-AT (``mnist_at``) and SGLR (``mnist_sglr``)
trained and tested at eps 0.1 (the main job's), 0.2 and 0.3 (the usual MNIST radius),
training PGD-10 with step eps/4 and test PGD-20 with step eps/8 at the same eps. A seed
sets the initialisation and the data order; both methods of a seed share them.

  python studies/epsilon.py [--eps 0.1,0.2,0.3] [--seeds 0,1] [--out DIR] [--mini] [--list]

Runs go seed by seed; run the same command again to finish an interrupted study.
"""
import sys

import common
from common import parse_args, run_study

METHODS = (('PGD-AT', 'mnist_at'), ('SGLR', 'mnist_sglr'))


def radius(eps: float, seed: int) -> dict:
  return {'seed': seed, 'attack.eps': eps, 'attack.step_size': eps / 4, 'eval.eps': eps,
          'eval.step_size': eps / 8}


def main():
  command = ' '.join(['studies/epsilon.py'] + sys.argv[1:])
  radii = [float(e) for e in common.take_option('--eps', '0.1,0.2,0.3').split(',')]
  seeds = [int(s) for s in common.take_option('--seeds', '0,1').split(',')]
  args = parse_args(__doc__, 'epsilon')
  args.command = command
  groups = {}
  runs = [run for seed in seeds
          for run in common.seed_grid('eps', radii, seed, METHODS, radius, groups)]
  run_study('perturbation radius', runs, args, groups)


if __name__ == '__main__':
  main()

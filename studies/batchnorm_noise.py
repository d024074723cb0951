"""Study 5: where robust overfitting is unmistakable on the packaged MNIST.

40% symmetric label noise, the wide small CNN (conv64-s2, conv64-s2, dense 1024), 40
epochs, lr decayed after epochs 20 and 30: PGD-AT with BatchNorm (``mnist_noisy_at``), the
same net without BatchNorm (``mnist_noisy_nobn_at``) and SGLR from epoch 4 without
BatchNorm (``mnist_noisy_nobn_sglr``); one seed each (``--seeds`` for more).

  python studies/batchnorm_noise.py [--seeds 0] [--no-bn-only] [--baselines] [--out DIR] [--mini]

``--no-bn-only`` skips the BatchNorm run (it is the label-noise study's seed-0 PGD-AT run).
``--baselines`` adds, for each seed, the paper's other baselines in the no-BatchNorm setting
(``common.baselines``: AWP, KD-AT distilling from that seed's no-BN PGD-AT run, KD-SWA
with a standard teacher and weight averaging from epoch 20, after the first decay, PGD-AT +
uniform label smoothing and PGD-AT + temporal ensembling ramped up until epoch 20).
"""
import sys

import common
from common import parse_args, run_study


def main():
  command = ' '.join(['studies/batchnorm_noise.py'] + sys.argv[1:])
  seeds = (0,)
  if '--seeds' in sys.argv:
    i = sys.argv.index('--seeds')
    seeds = tuple(int(s) for s in sys.argv[i + 1].split(','))
    del sys.argv[i:i + 2]
  no_bn_only = '--no-bn-only' in sys.argv
  if no_bn_only:
    sys.argv.remove('--no-bn-only')
  with_baselines = '--baselines' in sys.argv
  if with_baselines:
    sys.argv.remove('--baselines')
  args = parse_args(__doc__, 'batchnorm_noise')
  args.command = command
  runs = []
  for seed in seeds:
    if not no_bn_only:
      runs.append((f'PGD-AT with BN seed {seed}', 'mnist_noisy_at', {'seed': seed}))
    runs.append((f'PGD-AT no BN seed {seed}', 'mnist_noisy_nobn_at', {'seed': seed}))
    runs.append((f'SGLR no BN seed {seed}', 'mnist_noisy_nobn_sglr', {'seed': seed}))
    if with_baselines:
      runs += common.baselines(args.out, f'no BN seed {seed}', {'seed': seed},
                               teacher=f'PGD-AT no BN seed {seed}', swa_start=20)
  run_study('robust overfitting without BatchNorm', runs, args)


if __name__ == '__main__':
  main()

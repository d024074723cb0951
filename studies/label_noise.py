"""Study 2: symmetric label noise 0, 0.2, 0.4, 0.6; hard labels (PGD-AT) vs SGLR
(paper Tab. B.2, Fig. 4) on the packaged MNIST, small CNN conv64-s2, conv64-s2, dense
1024, 40 epochs (configs/mnist_noisy_*.py). Noise 0.4 is run with two seeds (model and
data-order seed 0 and 1; the noisy labels stay those of noise seed 0): 10 runs;
``--rates 0.4`` runs the headline setting alone (4 runs).

  python studies/label_noise.py [--rates 0,0.2,0.4,0.6] [--seeds 0,1] [--out DIR] [--mini]

``--seeds`` sets the seeds of the noise-0.4 runs (default 0,1; other rates use seed 0).
"""
import sys

from common import parse_args, run_study


def main():
  command = ' '.join(['studies/label_noise.py'] + sys.argv[1:])
  rates = [0.0, 0.2, 0.4, 0.6]
  if '--rates' in sys.argv:
    i = sys.argv.index('--rates')
    rates = [float(r) for r in sys.argv[i + 1].split(',')]
    del sys.argv[i:i + 2]
  seeds_04 = (0, 1)
  if '--seeds' in sys.argv:
    i = sys.argv.index('--seeds')
    seeds_04 = tuple(int(s) for s in sys.argv[i + 1].split(','))
    del sys.argv[i:i + 2]
  args = parse_args(__doc__, 'label_noise')
  args.command = command
  if args.mini:
    rates = [0.4]
  runs, groups = [], {}
  for r in rates:
    seeds = seeds_04 if r == 0.4 and not args.mini else (0,)
    for seed in seeds:
      for method, module in (('PGD-AT', 'mnist_noisy_at'), ('SGLR', 'mnist_noisy_sglr')):
        name = f'{method} noise {r:g} seed {seed}'
        runs.append((name, module, {'data.noise.rate': r, 'seed': seed,
                                    'data.noise.kind': 'symmetric' if r else 'none'}))
        groups.setdefault(f'noise_{r:g}_seed_{seed}', []).append(name)
  run_study('label noise', runs, args, groups)


if __name__ == '__main__':
  main()

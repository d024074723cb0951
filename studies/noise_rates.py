"""Study 6: symmetric label noise 0, 0.2, 0.4, 0.6 with three seeds; PGD-AT vs SGLR
(paper Tab. B.2, Fig. 4).

The net of study 5, where robust overfitting is unmistakable over 40 epochs: the wide
small CNN without BatchNorm (``configs/mnist_noisy_nobn_*``), here on the main job's
20-epoch schedule (lr 0.1, decayed x0.1 after epochs 10 and 15) so that 24 runs fit in a
few CPU hours. A seed sets the model initialisation, the data order AND the noisy labels,
so the PGD-AT and SGLR runs of one seed see the same flipped labels (the pairs of the
paired comparison in docs/RESULTS.md, written by studies/aggregate.py).

Unless ``--no-baselines``, the paper's other baselines (``common.baselines``: AWP, KD-AT,
KD-SWA, LS, TE) are added at noise 0.4, seed 0 (distilling from that PGD-AT run). The measured
baselines are those of study 5's 40-epoch setting (``studies/batchnorm_noise.py
--baselines``), where PGD-AT overfits; docs/RESULTS.md says why.

  python studies/noise_rates.py [--rates 0,0.2,0.4,0.6] [--seeds 0,1,2] [--no-baselines]
                                [--out DIR] [--mini] [--list] [--reverse] [--report-only]

Runs go seed by seed, so an interrupted study has whole seeds; run the same command again
to finish it (``--reverse`` in a second process shares the work).
"""
import sys

import common
from common import parse_args, run_study

SCHEDULE = {'train.epochs': 20, 'schedule.decay_epochs': (10, 15)}
METHODS = (('PGD-AT', 'mnist_noisy_nobn_at'), ('SGLR', 'mnist_noisy_nobn_sglr'))
BASELINE_RATE, BASELINE_SEED = 0.4, 0


def noise(rate: float, seed: int) -> dict:
  return dict(SCHEDULE, **{'data.noise.rate': rate, 'data.noise.seed': seed, 'seed': seed,
                           'data.noise.kind': 'symmetric' if rate else 'none'})


def baselines(out: str, rate: float, seed: int) -> list:
  """AWP, the standard teacher, KD-AT, KD-SWA, LS and TE at (rate, seed) (``common.baselines``);
  the robust teacher is the PGD-AT run of the same rate and seed."""
  return common.baselines(out, f'noise {rate:g} seed {seed}', noise(rate, seed),
                          teacher=f'PGD-AT noise {rate:g} seed {seed}', swa_start=10)


def main():
  command = ' '.join(['studies/noise_rates.py'] + sys.argv[1:])
  rates = [float(r) for r in common.take_option('--rates', '0,0.2,0.4,0.6').split(',')]
  seeds = [int(s) for s in common.take_option('--seeds', '0,1,2').split(',')]
  with_baselines = '--no-baselines' not in sys.argv
  if not with_baselines:
    sys.argv.remove('--no-baselines')
  args = parse_args(__doc__, 'noise_rates')
  args.command = command
  runs, groups = [], {}
  for seed in seeds:
    runs += common.seed_grid('noise', rates, seed, METHODS, noise, groups)
    if with_baselines and seed == BASELINE_SEED and BASELINE_RATE in rates:
      extra = baselines(args.out, BASELINE_RATE, seed)
      runs += extra
      groups['baselines'] = [f'{m} noise {BASELINE_RATE:g} seed {seed}' for m, _ in METHODS]
      groups['baselines'] += [n for n, _, _ in extra if not n.startswith('standard')]
  if args.mini:  # the smoke test: PGD-AT at the first rate, SGLR at the second (two groups)
    runs = [runs[0], runs[3]]
    names = {n for n, _, _ in runs}
    groups = {g: [n for n in ns if n in names] for g, ns in groups.items()}
    groups = {g: ns for g, ns in groups.items() if ns}
  run_study('label noise rates', runs, args, groups)


if __name__ == '__main__':
  main()

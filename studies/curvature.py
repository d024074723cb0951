"""Study 7: information in weights and curvature over training (paper Fig. 1 and B.7).

Reproduces, on the packaged MNIST, the paper's reading of robust overfitting in the
weights: Fig. 1, the information in weights (IIW, the PAC-Bayes information-bottleneck
estimate) rising together with the gradient norm of the adversarial loss after the LR
decay under PGD-AT, held down by SGLR; Fig. B.7, the Hessian trace of the training loss
(Hutchinson) under the piecewise schedule against the cosine one, whose smoother decay
should end in a flatter minimum.

The net of studies 5 and 6, where robust overfitting is unmistakable: the wide small CNN
without BatchNorm, 40% symmetric label noise, seed 0, the 20-epoch schedule (lr 0.1,
decayed x0.1 after epochs 10 and 15; the cosine run anneals over the 20 epochs). Every
epoch logs ``iiw`` and ``hessian_trace`` (``train.analysis_every_epochs=1``, on the first
``train.analysis_examples`` training examples with their noisy labels) into the run's
history; the figure is ``OUT/curvature.png``.

  python studies/curvature.py [--long] [--out DIR] [--mini]

``--long``: PGD-AT only, piecewise and cosine, on study 5's 40-epoch schedule (decays after
epochs 20 and 30), where PGD-AT memorises; into ``studies_out/curvature_40ep``.
"""
import os
import sys

from common import parse_args, run_study

SETTING = {'seed': 0, 'data.noise.rate': 0.4, 'data.noise.seed': 0,
           'train.epochs': 20, 'schedule.decay_epochs': (10, 15),
           'train.analysis_every_epochs': 1}
RUNS = (
    ('PGD-AT piecewise', 'mnist_noisy_nobn_at', SETTING),
    ('SGLR piecewise', 'mnist_noisy_nobn_sglr', SETTING),
    ('PGD-AT cosine', 'mnist_noisy_nobn_at', dict(SETTING, **{'schedule.name': 'cosine'})),
)


LONG = {'train.epochs': 40, 'schedule.decay_epochs': (20, 30)}


def main():
  command = ' '.join(['studies/curvature.py'] + sys.argv[1:])
  long = '--long' in sys.argv
  if long:
    sys.argv.remove('--long')
  args = parse_args(__doc__, 'curvature_40ep' if long else 'curvature')
  args.command = command
  runs = ([(name, module, dict(overrides, **LONG)) for name, module, overrides in RUNS
           if name.startswith('PGD-AT')] if long else list(RUNS))
  title = 'information in weights and curvature' + (', 40 epochs' if long else '')
  summary = run_study(title, runs, args)
  if args.list:
    return
  # the study's figure, whether or not the report lists it
  from sglr_jax.report.figures import curvature  # pylint: disable=g-import-not-at-top
  from sglr_jax.report.runs import load_run  # pylint: disable=g-import-not-at-top
  runs = [load_run(os.path.join(args.out, 'runs', name)) for name in summary['runs']]
  print(curvature.plot_curvature(runs, os.path.join(args.out, curvature.FILE_NAME)))


if __name__ == '__main__':
  main()

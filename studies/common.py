"""Shared driver of the studies: train and evaluate a list of runs, then report.

Each study script lists its runs as ``(run name, config module, overrides)``; this
module trains each into ``OUT/runs/NAME`` (resuming if interrupted), evaluates best
and final, and writes figures and tables into ``OUT`` with ``sglr_jax.report``,
plus ``OUT/summary.json`` (wall time, machine, per-run best/final numbers).
``--mini`` shrinks everything to a few steps (and at most two runs: the first and
the last) so the scripts are tested in CI. On CPU the runs use several XLA devices,
one per core, chosen as ``run.py`` does (``sglr_jax/platforms/xla_cpu/host_devices.py``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MINI = {
    'model.width': 8, 'model.dense': 0, 'model.features': (), 'data.train_size': 128,
    'data.test_size': 50, 'train.batch_size': 64, 'train.epochs': 2, 'schedule.decay_epochs': (1,),
    'attack.steps': 1, 'eval.steps': 2, 'eval.batch_size': 50, 'sglr.start_epoch': 1,
}


def parse_args(description: str, default_out: str):
  p = argparse.ArgumentParser(description=description)
  p.add_argument('--out', default=os.path.join(ROOT, 'studies_out', default_out),
                 help='folder for runs, figures and tables')
  p.add_argument('--mini', action='store_true', help='a few steps per run (smoke test)')
  p.add_argument('--no-progress', action='store_true')
  p.add_argument('--suite', default='natural,pgd20,ece',
                 help="eval.suite of every run; add 'autoattack' for the AutoAttack row "
                      '(the longest part of an evaluation on CPU)')
  return p.parse_args()


def set_field(c, path: str, value):
  node = c
  *parents, last = path.split('.')
  for k in parents:
    node = node[k]
  node[last] = value


def make_config(module: str, overrides: dict, mini: bool, suite: str = ''):
  c = importlib.import_module(f'sglr_jax.configs.{module}').get_config()
  if suite:
    c.eval.suite = tuple(suite.split(','))
  for k, v in overrides.items():
    set_field(c, k, v)
  if mini:
    for k, v in MINI.items():
      if k == 'sglr.start_epoch' and not c.sglr.enabled:
        continue
      set_field(c, k, v)
  return c


def configure_host_devices(configs) -> int:
  """XLA host devices for all the study's configs, before anything imports jax."""
  from sglr_jax.platforms.xla_cpu import host_devices  # pylint: disable=g-import-not-at-top
  first = configs[0]
  return host_devices.configure(
      -1, batch_sizes=tuple(b for c in configs for b in (c.train.batch_size, c.eval.batch_size)),
      model_name=str(first.model.name), cpu_convs=str(first.parallel.get('cpu_convs', 'auto')),
      distributed=False)


def run_study(title: str, runs, args, groups=None) -> dict:
  """Trains + evaluates each run, then writes the report. ``groups`` maps a figure
  group name to the run names to put together (default: all in one)."""
  if args.mini and len(runs) > 2:  # the smoke test: first and last run only
    runs = [runs[0], runs[-1]]
    names = {r[0] for r in runs}
    groups = {g: [n for n in ns if n in names] for g, ns in (groups or {}).items()} or None
    groups = {g: ns for g, ns in (groups or {}).items() if ns} or None
  configs = [make_config(module, dict(overrides, name=name), args.mini, getattr(args, 'suite', ''))
             for name, module, overrides in runs]
  configure_host_devices(configs)
  # pylint: disable=g-import-not-at-top  (after the host devices are set)
  import jax
  from sglr_jax import report
  from sglr_jax.evaluation.evaluate import evaluate
  from sglr_jax.training.loop import train_and_evaluate
  # pylint: enable=g-import-not-at-top
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  summary = {'title': title, 'machine': f'{platform.machine()}, {os.cpu_count()} cores, '
                                        f'{jax.device_count()} {jax.default_backend()} devices',
             'command': getattr(args, 'command', None)
                        or ' '.join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
             'runs': {}}
  workdirs = {}
  for (name, module, overrides), c in zip(runs, configs):
    wd = os.path.join(args.out, 'runs', name)
    t = time.time()
    print(f'[{title}] training {name} ({module} {overrides})', flush=True)
    train_and_evaluate(c, wd, progress=not args.no_progress)
    res = evaluate(c, wd, progress=not args.no_progress)
    summary['runs'][name] = {'config': module, 'overrides': {k: list(v) if isinstance(v, tuple)
                                                              else v for k, v in overrides.items()},
                             'seed': c.seed, 'wall_s': round(time.time() - t, 1),
                             'best': _brief(res['best']), 'final': _brief(res['final'])}
    workdirs[name] = wd
  groups = groups or {'all': list(workdirs)}
  written = []
  for group, names in groups.items():
    out = args.out if len(groups) == 1 else os.path.join(args.out, group)
    written += report.make_report([workdirs[n] for n in names], out)
  summary['wall_s'] = round(time.time() - t0, 1)
  with open(os.path.join(args.out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print('\n'.join(written))
  return summary


def _brief(r: dict) -> dict:
  return {k: r[k] for k in ('epoch', 'natural_acc', 'pgd20_acc', 'autoattack_acc') if k in r}

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


def take_option(flag: str, default: str) -> str:
  """The value after ``flag`` in ``sys.argv`` (removed from it, so ``parse_args`` does not
  see a study's own options), or ``default``."""
  if flag not in sys.argv:
    return default
  i = sys.argv.index(flag)
  value = sys.argv[i + 1]
  del sys.argv[i:i + 2]
  return value


def seed_grid(param: str, values, seed: int, methods, overrides, groups: dict) -> list:
  """One seed's runs over ``values`` of ``param`` for each ``(method, config module)``,
  named ``METHOD PARAM VALUE seed SEED`` (the names ``aggregate.py`` parses), with
  ``overrides(value, seed)``; each run's name is added to ``groups['PARAM_VALUE']``."""
  runs = []
  for v in values:
    for method, module in methods:
      name = f'{method} {param} {v:g} seed {seed}'
      runs.append((name, module, overrides(v, seed)))
      groups.setdefault(f'{param}_{v:g}', []).append(name)
  return runs


def parse_args(description: str, default_out: str):
  p = argparse.ArgumentParser(description=description)
  p.add_argument('--out', default=os.path.join(ROOT, 'studies_out', default_out),
                 help='folder for runs, figures and tables')
  p.add_argument('--mini', action='store_true', help='a few steps per run (smoke test)')
  p.add_argument('--no-progress', action='store_true')
  p.add_argument('--report-only', action='store_true',
                 help='the summary and report of the runs already finished; train nothing')
  p.add_argument('--list', action='store_true',
                 help='validate every run\'s config and print the runs; train nothing')
  p.add_argument('--reverse', action='store_true',
                 help='the runs in reverse order: a second process sharing the study (each '
                      'skips the runs the other is training; run the command again at the '
                      'end for the summary of all)')
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
  if getattr(args, 'list', False):
    from sglr_jax import config_validation  # pylint: disable=g-import-not-at-top
    for (name, module, overrides), c in zip(runs, configs):
      config_validation.validate(c)
      print(f'{name}\t{module}\t{overrides}')
    return {'title': title, 'runs': {name: {} for name, _, _ in runs}}
  configure_host_devices(configs)
  # pylint: disable=g-import-not-at-top  (after the host devices are set)
  import jax
  from sglr_jax import report
  from sglr_jax.evaluation.evaluate import evaluate
  from sglr_jax.training.loop import train_and_evaluate
  from sglr_jax.workdir import WorkdirLockedError
  # pylint: enable=g-import-not-at-top
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  summary = {'title': title, 'machine': f'{platform.machine()}, {os.cpu_count()} cores, '
                                        f'{jax.device_count()} {jax.default_backend()} devices',
             'command': getattr(args, 'command', None)
                        or ' '.join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
             'runs': {}}
  spec = {name: (module, overrides, c) for (name, module, overrides), c in zip(runs, configs)}
  workdirs, busy = {}, []

  def record(name: str, res: dict, wall):
    module, overrides, c = spec[name]
    workdirs[name] = os.path.join(args.out, 'runs', name)
    summary['runs'][name] = {'config': module, 'overrides': {k: list(v) if isinstance(v, tuple)
                                                              else v for k, v in overrides.items()},
                             'seed': c.seed, 'wall_s': wall,
                             'best': _brief(res['best']), 'final': _brief(res['final'])}

  for name in (reversed(list(spec)) if args.reverse else spec):
    module, overrides, c = spec[name]
    wd = os.path.join(args.out, 'runs', name)
    t = time.time()
    res = _finished(wd, c)
    if res is not None:  # done by an earlier invocation or another process
      record(name, res, _previous_runs(args.out).get(name, {}).get('wall_s'))
      continue
    if getattr(args, 'report_only', False):
      print(f'[{title}] {name}: not finished; left out', flush=True)
      continue
    print(f'[{title}] training {name} ({module} {overrides})', flush=True)
    try:
      train_and_evaluate(c, wd, progress=not args.no_progress)
    except WorkdirLockedError:  # another process of the study trains it
      print(f'[{title}] {name}: trained by another process; skipped', flush=True)
      busy.append(name)
      continue
    record(name, evaluate(c, wd, progress=not args.no_progress), round(time.time() - t, 1))
  for name in list(busy):  # finished by the other process meanwhile?
    res = _finished(os.path.join(args.out, 'runs', name), spec[name][2])
    if res is not None:
      busy.remove(name)
      record(name, res, _previous_runs(args.out).get(name, {}).get('wall_s'))
  if busy:
    print(f'[{title}] {len(busy)} runs are still training in another process: run this '
          'command again when it ends for the summary and report of all', flush=True)
  names = [r[0] for r in runs]  # the study's order, whatever order they ran in
  workdirs = {n: workdirs[n] for n in names if n in workdirs}
  summary['runs'] = {n: summary['runs'][n] for n in names if n in summary['runs']}
  groups = groups or {'all': list(workdirs)}
  written = []
  for group, names in groups.items():
    out = args.out if len(groups) == 1 else os.path.join(args.out, group)
    if any(n not in workdirs for n in names):
      continue  # a run of it is still training elsewhere
    written += report.make_report([workdirs[n] for n in names], out)
  summary['wall_s'] = round(time.time() - t0, 1)
  with open(os.path.join(args.out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print('\n'.join(written))
  return summary


def baselines(out: str, suffix: str, base: dict, teacher: str, swa_start: int) -> list:
  """The paper's other baselines (Tab. 2) as runs of the wide no-BatchNorm net
  (``mnist_noisy_nobn_at``) with overrides ``base``: AWP (gamma 5e-3 from the first
  epoch), a standard teacher (no attack), KD-AT distilling from the best checkpoint of
  the study's run ``teacher`` and KD-SWA adding the standard teacher and weight averaging
  from epoch ``swa_start`` (0-based), with the weights and temperature of
  ``configs/_kd.py``; then PGD-AT + uniform label smoothing (mass 0.1) and PGD-AT +
  temporal ensembling (weight 30, momentum 0.9, ramped up until ``swa_start``, which the
  studies put at the first decay)."""
  std = f'standard {suffix}'
  kd = {'objective.name': 'kd', 'objective.teacher_workdir': os.path.join(out, 'runs', teacher),
        'objective.kd_temperature': 2.0, 'objective.kd_weight': 0.6}
  module = 'mnist_noisy_nobn_at'
  return [
      (f'AWP {suffix}', module,
       dict(base, **{'objective.awp_gamma': 5e-3, 'objective.awp_warmup_epochs': 0})),
      (std, module, dict(base, **{'attack.eps': 0.0, 'attack.steps': 1})),
      (f'KD-AT {suffix}', module,
       dict(base, **kd, **{'objective.kd_std_weight': 0.0, 'objective.kd_ce_weight': 0.4})),
      (f'KD-SWA {suffix}', module,
       dict(base, **kd, **{'objective.std_teacher_workdir': os.path.join(out, 'runs', std),
                           'objective.kd_std_weight': 0.1, 'objective.kd_ce_weight': 0.3,
                           'train.swa_start_epoch': swa_start, 'train.swa_every_steps': 0})),
      (f'LS {suffix}', module, dict(base, **{'objective.name': 'ls', 'objective.ls_eps': 0.1})),
      (f'TE {suffix}', module,
       dict(base, **{'objective.name': 'te', 'objective.te_weight': 30.0,
                     'objective.te_momentum': 0.9, 'objective.te_rampup_epochs': swa_start})),
  ]


def _previous_runs(out: str) -> dict:
  """The runs of the study's last summary.json (their wall times outlive a rerun)."""
  try:
    with open(os.path.join(out, 'summary.json')) as f:
      return json.load(f).get('runs', {})
  except (OSError, ValueError):
    return {}


def _finished(wd: str, c) -> dict | None:
  """The results of a run that trained all its epochs and was evaluated, else None."""
  from sglr_jax.history import read_history  # pylint: disable=g-import-not-at-top
  path = os.path.join(wd, 'results.json')
  if not os.path.exists(path):
    return None
  hist = read_history(wd, strict=False)
  if not hist or hist[-1].get('epoch') != c.train.epochs:
    return None
  with open(path) as f:
    return json.load(f)


def _brief(r: dict) -> dict:
  return {k: r[k] for k in ('epoch', 'natural_acc', 'pgd20_acc', 'autoattack_acc') if k in r}

"""The paper's checkpoint analyses on trained runs: information in weights and gradient
norm (Fig. 1b), Hessian trace (Fig. B.7), density of the labelled-class probability
(Fig. B.3) and penultimate features in 2-D with their class separation (Fig. 5).

  python studies/analyses.py --runs NAME=WORKDIR[,NAME=WORKDIR...] [--out DIR] [--kinds best,final]

Writes ``OUT/analyses.json`` (every number), ``OUT/analyses.md`` (one row per
checkpoint), ``OUT/density.png``, ``OUT/density_flipped.png`` (runs with label noise) and
``OUT/embedding.png``. A checkpoint already in ``analyses.json`` is not redone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from sglr_jax.analysis import checkpoint
from sglr_jax.report.figures import analyses as figures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table(results: list[dict], names: list[str]) -> str:
  rows = ['| run | checkpoint | epoch | IIW | grad norm | Hessian trace (+- s.e.) | '
          'silhouette | intra/inter | mean p(label) |', '|' + '---|' * 9]
  for r, n in zip(results, names):
    h, s = r['hessian'], r['separation']
    rows.append(f"| {n} | {r['kind']} | {r['epoch']} | {r['iiw']:.4g} | {r['grad_norm']:.4g} | "
                f"{h['trace']:.4g} +- {h['stderr']:.2g} | {s['silhouette']:.3f} | "
                f"{s['intra_inter']:.3f} | {r['labelled_prob_mean']:.3f} |")
  return '\n'.join(rows) + '\n'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--runs', required=True, help='NAME=WORKDIR pairs, comma-separated')
  p.add_argument('--out', default=os.path.join(ROOT, 'studies_out', 'analyses'))
  p.add_argument('--kinds', default='best,final')
  p.add_argument('--probes', type=int, default=8, help='Hutchinson probes per checkpoint')
  p.add_argument('--points', type=int, default=500, help='test points in the embedding')
  args = p.parse_args(argv)
  runs = []
  for item in args.runs.split(','):
    name, sep, wd = item.partition('=')
    if not sep or not name or not wd:
      p.error(f'--runs entry {item!r} is not NAME=WORKDIR')
    runs.append((name, wd))
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, 'analyses.json')
  done = json.load(open(path)) if os.path.exists(path) else []
  have = {(d['name'], d['kind']) for d in done}
  t0 = time.time()
  for name, wd in runs:
    for kind in args.kinds.split(','):
      if (name, kind) in have:
        continue
      r = checkpoint.analyse(wd, kind, probes=args.probes, embed_points=args.points)
      r['name'] = name
      done.append(r)
      with open(path + '.tmp', 'w') as f:
        json.dump(done, f)
      os.replace(path + '.tmp', path)
      print(f'{name} {kind}: IIW {r["iiw"]:.4g}, trace {r["hessian"]["trace"]:.4g}, '
            f'silhouette {r["separation"]["silhouette"]:.3f}', flush=True)
  names = [d['name'] for d in done]
  # every invocation that added checkpoints to this folder, oldest first
  log = os.path.join(args.out, 'commands.json')
  commands = json.load(open(log)) if os.path.exists(log) else []
  command = f'python studies/analyses.py {" ".join(argv or sys.argv[1:])}'
  if len(done) > len(have) or not commands:
    commands.append({'command': command, 'wall_s': round(time.time() - t0)})
    with open(log, 'w') as f:
      json.dump(commands, f, indent=1)
  with open(os.path.join(args.out, 'analyses.md'), 'w') as f:
    f.write('\n'.join(f"Command: `{c['command']}`" + (
        '.' if c.get('wall_s') is None else f"; wall time {c['wall_s']} s.")
                       for c in commands) + '\n\n' + table(done, names))
  figures.plot_density(done, names, os.path.join(args.out, 'density.png'))
  figures.plot_density(done, names, os.path.join(args.out, 'density_flipped.png'), 'flipped')
  figures.plot_embeddings(done, names, os.path.join(args.out, 'embedding.png'))


if __name__ == '__main__':
  main()

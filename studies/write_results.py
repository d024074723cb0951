"""Assembles docs/RESULTS.md from the studies' outputs (nothing in it is typed by hand
except the readings in studies/readings/STUDY.md).

  python studies/write_results.py [--studies_out studies_out] [--docs docs]

For each study folder with a summary.json: its command, seeds, wall time and machine;
a per-run table (best / final / diff of natural and PGD-20 accuracy, final fit of the
noisy labels where there is label noise) computed from the runs' results.json and
history.jsonl; the figures (copied to docs/figures/STUDY/); and the reading.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil

import aggregate
from sglr_jax.evaluation import results
from sglr_jax.history import read_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ORDER = ('robust_overfitting', 'label_noise', 'batchnorm_noise', 'noise_rates', 'epsilon',
         'curvature', 'curvature_40ep', 'analyses', 'alpha_temperature', 'trades')
# studies whose tables are over seeds (studies/aggregate.py): their figure's file name
SEEDED = {'noise_rates': 'pgd20_vs_noise_rate.png', 'epsilon': 'pgd20_vs_eps.png',
          'alpha_temperature': 'pgd20_and_ece_by_setting.png'}
# study folders written by a script run with a flag: folder -> (script, flag)
VARIANTS = {'curvature_40ep': ('curvature', '--long')}
SWEEP_BASE = 'alpha 0 T 1'  # the sweep's plain PGD-AT, which every setting is compared with
METRICS = ('natural_acc', 'pgd20_acc')
COLUMNS = ('best epoch', 'seed', 'final fit of noisy labels (%)', 'training wall (s)')


def run_rows(study_dir: str, summary: dict) -> list[str]:
  """The study's Best / Final / Diff table (``evaluation.results``), one row per run."""
  rows = []
  for name, info in summary['runs'].items():
    wd = os.path.join(study_dir, 'runs', name)
    with open(os.path.join(wd, 'results.json')) as f:
      res = json.load(f)
    hist = read_history(wd)
    fit = hist[-1].get('train_noisy_fit') if hist else None
    train_wall = round(sum(r.get('epoch_time_s', 0.0) for r in hist), 1)  # survives resumes
    row = {'method': name, 'best epoch': res['best']['epoch'], 'seed': info['seed'],
           'final fit of noisy labels (%)': results.fmt(results.percent(fit)),
           'training wall (s)': train_wall}
    got = results.best_final_diff(res['best'], res['final'], METRICS, res.get('diff'))
    for key, parts in got.items():
      row[key] = {p: results.percent(v) for p, v in parts.items()}
    rows.append(row)
  return results.runs_table(rows, METRICS, columns=COLUMNS).splitlines()


def seeded_section(study_dir: str, summary: dict, fig_dir: str, study: str) -> list[str]:
  """Mean ± sd over seeds, the paired comparison and its figure, then the per-run table
  folded."""
  rows = aggregate.run_metrics(study_dir, summary)
  png = os.path.join(fig_dir, SEEDED[study])
  mean = ('Mean ± standard deviation over seeds (percent' + (
      '; "fit of flipped labels": training examples whose label the noise changed and which '
      'the model predicts with the noisy label, at the last epoch' if any(
          r['fit'] is not None for r in rows) else '') + '):')
  if study == 'alpha_temperature':
    tables = (aggregate.seed_table(rows, aggregate.COLUMNS + aggregate.CALIBRATION)
              + ['', f'Paired comparison with {SWEEP_BASE} (plain PGD-AT; the same seed gives '
                 'every setting the same initialisation and data order):', '']
              + aggregate.settings_table(rows, SWEEP_BASE))
    aggregate.settings_figure(rows, png)
  else:
    tables = (aggregate.seed_table(rows)
              + ['', 'Paired comparison (the same seed gives both methods the same '
                 'initialisation and data order' + (', and the same noisy labels' if study ==
                                                    'noise_rates' else '') + '):', '']
              + aggregate.paired_table(rows))
    aggregate.rate_figure(rows, png)
  return ([mean, ''] + tables
          + ['', f'![{os.path.basename(png)}](figures/{study}/{os.path.basename(png)})', '',
             '<details><summary>Every run</summary>', ''] + run_rows(study_dir, summary)
          + ['', '</details>', ''])


def analyses_section(d: str, docs: str) -> list[str]:
  """``studies/analyses.py``'s table (it starts with its command line) and figures."""
  with open(os.path.join(d, 'analyses.md')) as f:
    out = ['## Checkpoint analyses', ''] + f.read().strip().splitlines() + ['']
  fig_dir = os.path.join(docs, 'figures', 'analyses')
  os.makedirs(fig_dir, exist_ok=True)
  for png in sorted(glob.glob(os.path.join(d, '*.png'))):
    shutil.copy(png, fig_dir)
    out.append(f'![{os.path.basename(png)}](figures/analyses/{os.path.basename(png)})')
  out.append('')
  reading = os.path.join(ROOT, 'studies', 'readings', 'analyses.md')
  if os.path.exists(reading):
    with open(reading) as f:
      out += ['**Reading.** ' + f.read().strip(), '']
  return out


def _study_of(line: str) -> str | None:
  """The study a section's ``Command: `python studies/SCRIPT.py ARGS``` line ran."""
  m = re.match(r'Command: `python studies/(\w+)\.py([^`]*)`', line)
  if not m:
    return None
  for study, (script, flag) in VARIANTS.items():
    if m[1] == script and flag in m[2].split():
      return study
  return m[1] if m[1] in ORDER else None


def _command_of(study: str) -> str:
  script, flag = VARIANTS.get(study, (study, ''))
  return f'studies/{script}.py' + (f' {flag}' if flag else '')


def _kept_sections(path: str) -> dict:
  """{study: its section's lines} of an existing RESULTS.md, found by the command line
  each section starts with (``python studies/STUDY.py``)."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    lines = f.read().splitlines()
  heads = [i for i, l in enumerate(lines) if l.startswith('## ')] + [len(lines)]
  kept = {}
  for a, b in zip(heads, heads[1:]):
    body = lines[a:b]
    study = next((s for s in map(_study_of, body) if s), None)
    if study:
      while body and not body[-1].strip():
        body = body[:-1]
      kept[study] = body
  return kept


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--studies_out', default=os.path.join(ROOT, 'studies_out'))
  p.add_argument('--docs', default=os.path.join(ROOT, 'docs'))
  args = p.parse_args()
  out = ['# Results measured with this code', '',
         'Every table below is written by `python studies/write_results.py` from the outputs '
         'of the study scripts in `studies/`; the figures are theirs. Accuracies in percent on '
         'the packaged MNIST test split (1,000 digits), PGD-20 at the config\'s eps (0.1; in '
         'the perturbation-radius study, each run\'s own); '
         '"best" is the epoch with the highest test PGD-20 accuracy, "final" the last epoch, '
         '"diff" best minus final (one decimal, as in the report).', '',
         'Each study is one resumable command (`python studies/STUDY.py`; a killed study '
         're-does only its unfinished runs, and a finished run is reused as it is): `--list` '
         'validates and prints its runs, `--reverse` lets a second process share the work '
         '(each skips the runs the other is training), `--report-only` writes the summary and '
         'report of the finished runs; `python studies/write_results.py` then writes this '
         'page.', '']
  claims = os.path.join(ROOT, 'studies', 'readings', 'claims.md')
  if os.path.exists(claims):  # the verdicts, written from the sections below
    with open(claims) as f:
      out += ["## The paper's claims, one by one", '', f.read().strip(), '']
  found = [s for s in ORDER if os.path.exists(os.path.join(args.studies_out, s, 'summary.json'))
           or os.path.exists(os.path.join(args.studies_out, s, 'analyses.md'))]
  # a study measured earlier whose outputs are not here: its section stays, in its place
  kept = _kept_sections(os.path.join(args.docs, 'RESULTS.md'))
  for study in ORDER:
    if study not in found:
      if study in kept:
        out += kept[study] + ['']
      continue
    d = os.path.join(args.studies_out, study)
    if study == 'analyses':
      out += analyses_section(d, args.docs)
      continue
    with open(os.path.join(d, 'summary.json')) as f:
      summary = json.load(f)
    train_min = sum(r.get('epoch_time_s', 0.0) for name in summary['runs']
                    for r in read_history(os.path.join(d, 'runs', name), strict=False)) / 60
    out += [f"## {summary['title'][:1].upper()}{summary['title'][1:]}", '',
            f"Command: `python {summary['command']}`; machine: {summary['machine']}; "
            f"wall time of the last invocation {summary['wall_s'] / 60:.1f} min for "
            f"{len(summary['runs'])} runs (a resumed study counts only what it re-did); the "
            f"runs' training and per-epoch evaluation took {train_min:.0f} min in all, summed "
            "from their histories.", '']
    fig_dir = os.path.join(args.docs, 'figures', study)
    os.makedirs(fig_dir, exist_ok=True)
    if study in SEEDED:
      out += seeded_section(d, summary, fig_dir, study)
    else:
      out += run_rows(d, summary) + ['']
    for png in sorted(glob.glob(os.path.join(d, '**', '*.png'), recursive=True)):
      rel = os.path.relpath(png, d).replace(os.sep, '_')
      if study in SEEDED and 'reliability_' in rel:  # one per run: too many to show
        continue
      shutil.copy(png, os.path.join(fig_dir, rel))
      out.append(f'![{rel}](figures/{study}/{rel})')
    out.append('')
    reading = os.path.join(ROOT, 'studies', 'readings', f'{study}.md')
    if os.path.exists(reading):
      with open(reading) as f:
        out += ['**Reading.** ' + f.read().strip(), '']
  missing = [s for s in ORDER if s not in found and s not in kept]
  if missing:
    out += ['## Not run yet', '', 'These studies have scripts but no measured outputs in this '
            'file yet: ' + ', '.join(f'`{_command_of(s)}`' for s in missing) + '.', '']
  os.makedirs(args.docs, exist_ok=True)
  with open(os.path.join(args.docs, 'RESULTS.md'), 'w') as f:
    f.write('\n'.join(out))
  print(os.path.join(args.docs, 'RESULTS.md'))


if __name__ == '__main__':
  main()

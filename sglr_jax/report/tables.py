"""The report's tables: Best / Final / Diff per run (``evaluation.results``), calibration,
and the overview of the runs.

A run with ``results.json`` shows its evaluated best and final checkpoints; one without
(still training, or never evaluated) shows its history: "best" is the epoch of highest
test PGD-20 accuracy and "final" the last epoch with a test accuracy, the paper's protocol.
"""
from __future__ import annotations

import os
import posixpath
from typing import Any, Iterable, Sequence

from sglr_jax import storage
from sglr_jax.evaluation import results
from sglr_jax.evaluation.results import number
from sglr_jax.report.runs import Run, as_runs, display_labels, field, fmt_rate

TABLE_METRICS = ('natural_acc', 'pgd20_acc', 'autoattack_acc')
# results.json key -> history.jsonl key of the same number on the test curve.
HISTORY_KEYS = {'natural_acc': 'test_natural_acc', 'pgd20_acc': 'test_pgd20_acc'}
ECE_KEYS = ('ece_clean', 'ece_adv')
HISTORY_NOTE = ('† no results.json: from the training history; best = epoch of highest '
                'test PGD-20 accuracy, final = last tested epoch.')


def _dict(x: Any) -> dict:
  return x if isinstance(x, dict) else {}


def summary(run: Run) -> dict:
  """Best / final / diff per metric as fractions, from results.json or else the history."""
  res = run.results
  out: dict[str, Any] = {}
  if res is not None and (isinstance(res.get('best'), dict) or isinstance(res.get('final'), dict)):
    best, final = _dict(res.get('best')), _dict(res.get('final'))
    out['source'] = 'results'
    out['best_epoch'] = number(best.get('epoch'))
    out['final_epoch'] = number(final.get('epoch'))
    if out['final_epoch'] is None:
      out['final_epoch'] = run.history[-1]['epoch']
    out['metrics'] = results.best_final_diff(best, final, TABLE_METRICS, _dict(res.get('diff')))
    for key in ECE_KEYS:
      out['metrics'][key] = {'best': number(best.get(key)), 'final': number(final.get(key))}
  else:
    out['source'] = 'history'
    tested = [r for r in run.history
              if any(number(r.get(h)) is not None for h in HISTORY_KEYS.values())]
    with_pgd = [r for r in run.history if number(r.get('test_pgd20_acc')) is not None]
    best = max(with_pgd, key=lambda r: number(r['test_pgd20_acc'])) if with_pgd else {}
    final = tested[-1] if tested else {}
    out['best_epoch'] = best.get('epoch')
    out['final_epoch'] = final.get('epoch')
    as_results = lambda rec: {k: rec.get(h) for k, h in HISTORY_KEYS.items()}
    out['metrics'] = results.best_final_diff(as_results(best), as_results(final), TABLE_METRICS)
  for k in ('best_epoch', 'final_epoch'):
    if out[k] is not None:
      out[k] = int(out[k])
  return out


def _present_metrics(summaries: Sequence[dict]) -> list[str]:
  """Natural and PGD-20 always; AutoAttack only if some run has it."""
  out = []
  for key in TABLE_METRICS:
    has = any(s['metrics'][key][p] is not None for s in summaries for p in ('best', 'final'))
    if has or key != 'autoattack_acc':
      out.append(key)
  return out


def results_table_json(runs: Run | Iterable[Run]) -> dict:
  """The results table as data (percent, unrounded): one row per run."""
  runs = as_runs(runs)
  labels = display_labels(runs)
  summaries = [summary(r) for r in runs]
  metrics = _present_metrics(summaries)
  rows = []
  for run, label, s in zip(runs, labels, summaries):
    row = {'method': label, 'workdir': run.workdir, 'source': s['source'],
           'best_epoch': s['best_epoch'], 'final_epoch': s['final_epoch']}
    for key in metrics:
      row[key] = {p: results.percent(s['metrics'][key][p]) for p in results.PARTS}
    for key in ECE_KEYS:
      if key in s['metrics'] and any(v is not None for v in s['metrics'][key].values()):
        row[key] = {p: results.percent(v) for p, v in s['metrics'][key].items()}
    rows.append(row)
  return {'unit': 'percent', 'diff': 'best - final', 'metrics': metrics, 'rows': rows}


def results_table(runs: Run | Iterable[Run]) -> str:
  """Markdown Best / Final / Diff table in the paper's format (%, one decimal).

  Rows whose numbers come from the training history (no results.json yet) are marked with
  a dagger and explained below the table.
  """
  table = results_table_json(runs)
  rows = [dict(r, method=r['method'] + (' †' if r['source'] == 'history' else ''))
          for r in table['rows']]
  md = results.runs_table(rows, table['metrics'])
  if any(r['source'] == 'history' for r in rows):
    md += f'\n{HISTORY_NOTE}\n'
  return md


def calibration_table(runs: Sequence[Run]) -> str | None:
  """Markdown ECE table (%) for runs whose results.json has ECE; None if none has."""
  rows = [r for r in results_table_json(runs)['rows'] if any(k in r for k in ECE_KEYS)]
  if not rows:
    return None
  return results.runs_table(rows, ECE_KEYS, parts=('best', 'final'))


def _where(workdir: str, out_dir: str) -> str:
  """``workdir`` relative to ``out_dir``; a URL as it is unless both lie in one bucket."""
  if not (storage.is_url(workdir) or storage.is_url(out_dir)):
    return os.path.relpath(workdir, out_dir)
  (scheme_w, _, rest_w), (scheme_o, _, rest_o) = workdir.partition('://'), out_dir.partition('://')
  bucket_w, bucket_o = rest_w.split('/', 1)[0], rest_o.split('/', 1)[0]
  if (scheme_w, bucket_w) != (scheme_o, bucket_o) or not rest_o:
    return workdir
  return posixpath.relpath('/' + rest_w, '/' + rest_o)


def runs_overview(runs: Sequence[Run], labels: Sequence[str], rows: Sequence[dict],
                  out_dir: str) -> str:
  """Markdown: per run its workdir (relative to ``out_dir``, so the report can be moved),
  data, model, label noise, epochs done / planned and best PGD-20 epoch."""
  md = ['| Method | Workdir | Data | Model | Label noise | Epochs | Best PGD-20 epoch |',
        '|:---|:---|:---|:---|---:|---:|---:|']
  for run, label, row in zip(runs, labels, rows):
    rate = number(field(run.config, 'data.noise.rate'))
    epochs = field(run.config, 'train.epochs')
    cells = [label.replace('|', '\\|'), f'`{_where(run.workdir, out_dir)}`',
             str(field(run.config, 'data.name', '-')), str(field(run.config, 'model.name', '-')),
             fmt_rate(rate) if rate is not None else '-',
             f"{run.history[-1]['epoch']}" + (f' / {epochs}' if epochs else ''),
             '-' if row['best_epoch'] is None else str(row['best_epoch'])]
    md.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(md) + '\n'

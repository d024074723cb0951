"""The one Best / Final / Diff table: metric labels, the diff, and its markdown forms.

``evaluate`` writes ``results.json`` (``best`` and ``final``: one dict of metrics each, as
fractions, and their ``diff``) and ``results.md``; the report and ``studies/write_results.py``
show the same numbers through this module, so a label or a rounding cannot differ between
them. Reading is tolerant (``number``): results.json may come from older code.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from sglr_jax import storage, strict_json

# results.json key -> label, in table order.
METRIC_LABELS = {'natural_acc': 'Natural', 'pgd20_acc': 'PGD-20', 'autoattack_acc': 'AutoAttack',
                 'transfer_acc': 'Transfer', 'ece_clean': 'ECE clean', 'ece_adv': 'ECE PGD-20'}
PARTS = ('best', 'final', 'diff')


def diff(best: dict, final: dict) -> dict:
  return {k: best[k] - final[k] for k in METRIC_LABELS
          if isinstance(best.get(k), float) and isinstance(final.get(k), float)}


def markdown_table(results: dict, title: str = '') -> str:
  """The paper's format: one row per metric, Best / Final / Diff in percent."""
  best, final, d = results['best'], results['final'], results['diff']
  lines = []
  if title:
    lines += [f'### {title}', '']
  lines += [f"| Metric | Best (epoch {best['epoch']}) | Final (epoch {final['epoch']}) | Diff |",
            '|---|---|---|---|']
  smoke = results.get('eval_config', {}).get('autoattack_budget') == 'smoke'
  for k, label in METRIC_LABELS.items():
    if k == 'autoattack_acc' and smoke:
      label += ' (smoke budget)'  # not a robustness number
    if k in d:
      lines.append(f'| {label} | {100 * best[k]:.2f} | {100 * final[k]:.2f} | {100 * d[k]:+.2f} |')
  return '\n'.join(lines) + '\n'


def autoattack_breakdown(results: dict) -> str:
  """Markdown: robust accuracy after each attack of the ensemble (best and final), and
  the sanity checks' flags; '' when AutoAttack did not run."""
  best, final = results['best'], results['final']
  after_b, after_f = best.get('autoattack_after') or {}, final.get('autoattack_after') or {}
  if not after_b and not after_f:
    return ''
  lines = ['', '#### AutoAttack: robust accuracy after each attack', '',
           '| Attack | Best | Final |', '|---|---|---|']
  for name in list(dict.fromkeys(list(after_b) + list(after_f))):
    lines.append(f'| {name} | {fmt(percent(number(after_b.get(name))))} '
                 f'| {fmt(percent(number(after_f.get(name))))} |')
  flags = [f'- flag ({kind}): {f.get("check")}: {f.get("message")}'
           for kind, r in (('best', best), ('final', final))
           for f in r.get('autoattack_flags') or ()]
  lines += [''] + flags if flags else []
  return '\n'.join(lines) + '\n'


def write(workdir: str, results: dict) -> None:
  """``results.json`` (strict JSON) and ``results.md`` (titled with the workdir's name);
  ``workdir`` may be a URL."""
  storage.write_text(storage.join(workdir, 'results.json'), strict_json.dumps(results, indent=2))
  storage.write_text(storage.join(workdir, 'results.md'),
                     markdown_table(results, title=storage.basename(workdir))
                     + autoattack_breakdown(results))


def number(x: Any) -> float | None:
  """A finite float, or None for missing / null / NaN / non-numeric values."""
  if x is None or isinstance(x, bool):
    return None
  try:
    v = float(x)
  except (TypeError, ValueError):
    return None
  return v if math.isfinite(v) else None


def best_final_diff(best: dict, final: dict, keys: Iterable[str],
                    stored_diff: dict | None = None) -> dict[str, dict]:
  """``{key: {'best', 'final', 'diff'}}`` as fractions (None where missing).

  The diff is best - final of the numbers shown, so that a row is self-consistent; a
  ``stored_diff`` is used only where best or final is missing.
  """
  stored_diff = stored_diff or {}
  out = {}
  for key in keys:
    b, f = number(best.get(key)), number(final.get(key))
    d = b - f if b is not None and f is not None else number(stored_diff.get(key))
    out[key] = {'best': b, 'final': f, 'diff': d}
  return out


def percent(v: float | None) -> float | None:
  return None if v is None else 100.0 * v


def fmt(v: float | None) -> str:
  """One decimal, '-' for missing, never '-0.0'."""
  if v is None:
    return '-'
  s = f'{v:.1f}'
  return '0.0' if s == '-0.0' else s


def runs_table(rows: Sequence[dict], metrics: Sequence[str], parts: Sequence[str] = PARTS,
               columns: Sequence[str] = ()) -> str:
  """Markdown, one row per run: ``row['method']``, then ``parts`` of each metric
  (``row[metric][part]``, percent, one decimal), then the preformatted ``columns``."""
  head = ['Method']
  for key in metrics:
    head += [f'{METRIC_LABELS[key]} {parts[0]}'] + list(parts[1:])
  head += list(columns)
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join([':---'] + ['---:'] * (len(head) - 1)) + '|']
  for row in rows:
    cells = [row['method'].replace('|', '\\|')]
    for key in metrics:
      cells += [fmt((row.get(key) or {}).get(p)) for p in parts]
    cells += [str(row[c]) for c in columns]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'

"""Synthetic workdirs for the report tests (no training needed): config, history, results."""
from __future__ import annotations

import json
import math
import os
import struct

import pytest

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def config(objective='at', sglr=False, name='', start=12, epochs=30, noise=0.4,
           schedule='piecewise'):
  return {
      'name': name,
      'objective': {'name': objective},
      'sglr': {'enabled': sglr, 'start_epoch': start},
      'schedule': {'name': schedule, 'decay_epochs': [15, 22]},
      'train': {'epochs': epochs},
      'data': {'name': 'mnist', 'noise': {'rate': noise}},
      'model': {'name': 'wide_cnn'},
  }


def history(epochs=30, sglr=False, noisy=True, lr_decays=(15, 22)):
  """Robust overfitting after the first decay for PGD-AT; SGLR holds on."""
  recs = []
  for e in range(1, epochs + 1):
    lr = 0.1 * 0.1 ** sum(e > d for d in lr_decays)
    rise = 1 - math.exp(-e / 5)
    over = 0.0 if sglr else max(0, e - lr_decays[0]) / epochs
    rec = {
        'epoch': e, 'lr': lr, 'train_loss': 2.0 - 1.2 * rise,
        'train_adv_acc': 0.3 + 0.3 * rise + (0.6 * over if not sglr else 0.02),
        'test_natural_acc': 0.5 + 0.3 * rise - 0.2 * over,
        'test_pgd20_acc': 0.2 + 0.3 * rise - 0.4 * over,
        'grad_norm': 1.0 + 0.1 * rise + 4 * over + 0.05 * (e % 3),
        'epoch_time_s': 1.5,
        'test_ece_clean': 0.02 + 0.1 * over, 'test_ece_pgd20': 0.05 + 0.2 * over,
    }
    if noisy:
      rec['train_noisy_fit'] = 0.1 + 0.85 * over + 0.05 * rise
      rec['train_clean_acc'] = 0.5 + 0.3 * rise - 0.3 * over
    recs.append(rec)
  return recs


def reliability(seed=0, n=15):
  conf = [(i + 0.5) / n for i in range(n)]
  acc = [max(0.0, min(1.0, c - 0.05 - 0.01 * ((i + seed) % 4))) for i, c in enumerate(conf)]
  count = [0 if i < 2 else 10 * (i + 1) for i in range(n)]
  conf[0] = acc[0] = None  # an empty bin may be null
  return {'bin_conf': conf, 'bin_acc': acc, 'bin_count': count}


def results(best, final, best_epoch=16, final_epoch=30, diff=True, ece=True):
  """best/final: {metric: fraction}."""
  out = {'best': {'epoch': best_epoch, **best}, 'final': {'epoch': final_epoch, **final}}
  if ece:
    for split, k in (('best', 0), ('final', 1)):
      out[split].update({'ece_clean': 0.03 + 0.01 * k, 'ece_adv': 0.08 + 0.02 * k,
                         'reliability': {'clean': reliability(k), 'adv': reliability(k + 1)}})
  if diff:
    out['diff'] = {m: best[m] - final[m] for m in best if m in final}
  return out


def write_run(d, config=None, history=None, results=None, raw_history=None):
  os.makedirs(d, exist_ok=True)
  if config is not None:
    with open(os.path.join(d, 'config.json'), 'w') as f:
      json.dump(config, f)
  with open(os.path.join(d, 'history.jsonl'), 'w') as f:
    if raw_history is not None:
      f.write(raw_history)
    else:
      for rec in history:
        f.write(json.dumps(rec) + '\n')
  if results is not None:
    with open(os.path.join(d, 'results.json'), 'w') as f:
      json.dump(results, f)
  return str(d)


def png_size(path):
  with open(path, 'rb') as f:
    head = f.read(24)
  assert head[:8] == PNG_MAGIC, f'{path} is not a PNG'
  assert head[12:16] == b'IHDR'
  return struct.unpack('>II', head[16:24])


def assert_good_png(path):
  w, h = png_size(path)
  assert 500 <= w <= 3000 and 300 <= h <= 3000, (path, w, h)
  assert os.path.getsize(path) > 10_000, path  # not a blank canvas
  import matplotlib.image as mpimg
  img = mpimg.imread(path)  # [H, W, C] in [0, 1]
  assert img.shape[:2] == (h, w)
  assert img[..., :3].std() > 0.05, f'{path} looks empty'


@pytest.fixture
def three_runs(tmp_path):
  at = write_run(
      tmp_path / 'at', config('at'), history(),
      results({'natural_acc': 0.8071, 'pgd20_acc': 0.5073, 'autoattack_acc': 0.4768},
              {'natural_acc': 0.8243, 'pgd20_acc': 0.4138, 'autoattack_acc': 0.4021}))
  sglr = write_run(
      tmp_path / 'sglr', config('at', sglr=True), history(sglr=True),
      results({'natural_acc': 0.829, 'pgd20_acc': 0.5644},
              {'natural_acc': 0.8304, 'pgd20_acc': 0.5586}, ece=False))
  trades = write_run(tmp_path / 'trades', config('trades', sglr=True),
                     history(sglr=True, noisy=False))  # no results.json yet
  return [at, sglr, trades]


def table_rows(md):
  """{method: [cells]} from the markdown table."""
  rows = {}
  lines = [l for l in md.splitlines() if l.startswith('|')]
  for line in lines[2:]:
    cells = [c.strip() for c in line.strip('|').split('|')]
    rows[cells[0]] = cells[1:]
  return lines[0], rows

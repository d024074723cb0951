"""sglr_jax.report.events: where the LR decays and the SGLR start are drawn."""
from __future__ import annotations

import math

import report_support as rs
from sglr_jax.report.events import lr_decay_epochs, sglr_start_epoch
from sglr_jax.report.runs import load_run


def test_lr_decay_and_sglr_markers(tmp_path):
  run = load_run(rs.write_run(tmp_path / 'p', rs.config(sglr=True), rs.history()))
  # lr drops first appear at epochs 16 and 23: boundaries 15.5 and 22.5
  assert lr_decay_epochs(run) == [15.5, 22.5]
  # start_epoch 12 is the 0-based index: history epoch 13 is the first refined one
  assert sglr_start_epoch(run) == 12.5
  # No lr in the history: the config's decay epochs, up to the last epoch
  hist = [{'epoch': e} for e in range(1, 21)]
  run = load_run(rs.write_run(tmp_path / 'c', rs.config(), hist))
  assert lr_decay_epochs(run) == [15.0]
  assert sglr_start_epoch(run) is None  # SGLR disabled
  # Cosine: no discrete decay, whether named in the config or only seen in the lr
  hist = [{'epoch': e, 'lr': 0.05 * (1 + math.cos(math.pi * (e - 1) / 30))}
          for e in range(1, 31)]
  for cfg in (rs.config(schedule='cosine'), {}):
    run = load_run(rs.write_run(tmp_path / f'cos{len(cfg)}', cfg, hist))
    assert lr_decay_epochs(run) == []

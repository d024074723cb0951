"""history.jsonl: the last line of an epoch wins; strict reading refuses damage, tolerant skips it."""
import json

import pytest

from sglr_jax import history


def _write(tmp_path, lines):
  (tmp_path / 'history.jsonl').write_text('\n'.join(lines) + '\n')
  return str(tmp_path)


def test_append_truncate_and_last_line_per_epoch_wins(tmp_path):
  wd = str(tmp_path)
  assert history.read_history(wd) == []
  for rec in ({'epoch': 1, 'a': 1.0}, {'epoch': 2, 'a': 2.0}, {'epoch': 2, 'a': 3.0}):
    history.append_history(wd, rec)
  assert history.read_history(wd) == [{'epoch': 1, 'a': 1.0}, {'epoch': 2, 'a': 3.0}]
  history.truncate_history(wd, 1)
  assert history.read_history(wd) == [{'epoch': 1, 'a': 1.0}]


def test_strict_reading_refuses_a_torn_line(tmp_path):
  wd = _write(tmp_path, [json.dumps({'epoch': 1}), '{"epoch": 2, "a":'])
  with pytest.raises(ValueError, match='unreadable history line'):
    history.read_history(wd)


def test_tolerant_reading_skips_damage_with_one_warning(tmp_path):
  wd = _write(tmp_path, [json.dumps({'epoch': 2, 'a': 1}), json.dumps({'epoch': None}),
                         json.dumps({'epoch': 1.0, 'a': 0}), '[1, 2]', '{"epoch": 3, "a":'])
  with pytest.warns(UserWarning, match='skipped 3'):
    got = history.read_history(wd, strict=False)
  assert got == [{'epoch': 1, 'a': 0}, {'epoch': 2, 'a': 1}]
  assert all(isinstance(r['epoch'], int) for r in got)

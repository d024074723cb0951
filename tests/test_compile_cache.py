"""The persistent compilation cache: where it goes, and that a second process reuses it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT
from sglr_jax import compile_cache

PROBE = r'''
import json, sys
import jax, jax.numpy as jnp
from sglr_jax import compile_cache
counts = {}
jax.monitoring.register_event_listener(
    lambda name, **kw: counts.__setitem__(name, counts.get(name, 0) + 1))
where = compile_cache.configure(sys.argv[1])
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
f(jnp.ones((16, 16))).block_until_ready()
print(json.dumps({'dir': where, 'hits': counts.get('/jax/compilation_cache/cache_hits', 0),
                  'misses': counts.get('/jax/compilation_cache/cache_misses', 0)}))
'''


def _run(setting: str, **env):
  base = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  base.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0', **env)
  out = subprocess.run([sys.executable, '-c', PROBE, setting], cwd=ROOT, env=base,
                       capture_output=True, text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.splitlines()[-1])


def test_resolve():
  env = {'XDG_CACHE_HOME': '/c'}
  assert compile_cache.resolve('', env) == os.path.join('/c', 'sglr_jax', 'jax')
  assert compile_cache.resolve('none', env) == compile_cache.resolve('None', env) == ''
  assert compile_cache.resolve('gs://bucket/jax', env) == 'gs://bucket/jax'
  assert compile_cache.resolve('rel/cache', env) == os.path.abspath('rel/cache')
  home = {'HOME': '/h'}
  assert compile_cache.user_cache_dir(home).endswith(os.path.join('.cache', 'sglr_jax', 'jax'))


def test_a_second_process_reuses_the_compiled_program(tmp_path):
  """Two fresh processes compile the same program with the cache in ``tmp_path/c``: the
  first misses and writes an entry, the second reads it (JAX's cache-hit event)."""
  d = str(tmp_path / 'c')
  first = _run(d)
  assert first['dir'] == d and first['hits'] == 0 and first['misses'] >= 1
  entries = os.listdir(d)
  assert entries
  second = _run(d)
  assert second['hits'] >= 1 and second['misses'] == 0
  assert sorted(os.listdir(d)) == sorted(entries)  # nothing new was written


def test_off_and_an_explicit_environment_variable(tmp_path):
  off = _run('none', XDG_CACHE_HOME=str(tmp_path / 'xdg'))
  assert off == {'dir': '', 'hits': 0, 'misses': 0}
  assert not (tmp_path / 'xdg').exists()
  # the default goes to the user's cache directory ...
  default = _run('', XDG_CACHE_HOME=str(tmp_path / 'xdg'))
  assert default['dir'] == str(tmp_path / 'xdg' / 'sglr_jax' / 'jax') and default['misses'] >= 1
  assert os.listdir(default['dir'])
  # ... unless JAX_COMPILATION_CACHE_DIR names one: that wins
  env_dir = str(tmp_path / 'env')
  got = _run(str(tmp_path / 'config'), JAX_COMPILATION_CACHE_DIR=env_dir)
  assert got['dir'] == env_dir and os.listdir(env_dir)
  assert not (tmp_path / 'config').exists()

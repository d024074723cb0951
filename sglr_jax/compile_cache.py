"""JAX's persistent compilation cache: compiled programs kept across processes.

Without it every restart (a SLURM requeue, a preempted TPU VM, ``--mode=eval`` after
training) compiles every program again, GPU autotuning included. The command line sets
the directory from ``parallel.compilation_cache_dir`` before the first compilation:

  ''       the user's cache directory (``$XDG_CACHE_HOME/sglr_jax/jax``, else
           ``~/.cache/sglr_jax/jax``): shared by every run of this user on this machine;
  'none'   off;
  a path   that directory, e.g. one every host of a pod and every requeue can reach (a URL
           such as ``gs://bucket/...`` is passed to JAX as given; JAX opens it through
           ``etils.epath``, which needs ``gcsfs`` installed for ``gs://``).

Not inside the workdir by default: the workdir holds one run's results, and a run that
stops on a user error must leave it as it was; cache entries belong to the machine type
and the JAX version, not to a run (JAX keys them by program, devices and versions, so a
shared directory never serves a wrong program). A directory set already (the
``JAX_COMPILATION_CACHE_DIR`` environment variable, or code that set
``jax_compilation_cache_dir`` before) wins. JAX's own thresholds stay in force: programs
that compile in under a second are not written.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

OFF = 'none'


def user_cache_dir(environ: Optional[Mapping[str, str]] = None) -> str:
  env = os.environ if environ is None else environ
  base = env.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'sglr_jax', 'jax')


def resolve(setting: str, environ: Optional[Mapping[str, str]] = None) -> str:
  """The directory ``setting`` names ('' when off)."""
  setting = str(setting or '').strip()
  if setting.lower() == OFF:
    return ''
  if not setting:
    return user_cache_dir(environ)
  if '://' in setting:  # gs://, s3://: as given
    return setting
  return os.path.abspath(os.path.expanduser(setting))


def configure(setting: str) -> str:
  """Points JAX's persistent cache at ``resolve(setting)``, unless a directory is set
  already; returns the directory in force ('' = none). Call before the first compile."""
  import jax  # pylint: disable=g-import-not-at-top
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  path = resolve(setting)
  if path:
    jax.config.update('jax_compilation_cache_dir', path)
  return path

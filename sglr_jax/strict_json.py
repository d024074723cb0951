"""Strict JSON for everything the project writes: no bare ``NaN``/``Infinity`` tokens.

Python's ``json`` writes non-finite floats as ``NaN``/``Infinity``, which strict parsers
(``jq``, JavaScript, most JSON libraries) reject. A diverged metric is written as ``null``
instead, so every file stays readable by any tool.
"""
from __future__ import annotations

import json
import math
from typing import Any


def _finite(obj: Any) -> Any:
  """``obj`` with every non-finite float (numpy scalars included) replaced by ``None``."""
  if isinstance(obj, float):  # also np.float64, a float subclass
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  if hasattr(obj, 'dtype') and getattr(obj, 'shape', None) == ():  # numpy/jax scalar
    return _finite(obj.item())
  return obj


def dumps(obj: Any, **kwargs) -> str:
  """``json.dumps`` with non-finite floats written as ``null``; raises rather than
  ever emitting ``NaN``/``Infinity`` (``allow_nan=False``)."""
  kwargs.setdefault('allow_nan', False)
  return json.dumps(_finite(obj), **kwargs)

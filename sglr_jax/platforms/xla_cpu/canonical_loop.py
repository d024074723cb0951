"""Attack loops that keep XLA:CPU's fast convolutions inside `while` bodies.

Why this exists. XLA:CPU only runs a convolution through its fast library paths
(YNNPACK / Eigen) when the dimension numbers are canonical: input ``NHWC``
(``b01f``), kernel ``HWIO`` (``01io``), output ``NHWC``. Its
``ConvCanonicalization`` pass rewrites other convolutions into
transpose + canonical conv + transpose, but it only visits the *entry*
computation (``module->entry_computation()->MakeInstructionPostOrder()`` in
``xla/service/cpu/conv_canonicalization.cc``). A convolution inside a
``while``/``scan`` body is never canonicalised, so a non-canonical one is emitted
as a naive "elemental" LLVM loop nest, several times slower.

JAX's transpose rule for ``conv_general_dilated`` (the input gradient) swaps the
kernel's feature dimensions: ``dim_labels=b01f_01oi->b01f``. Every input-gradient
convolution of a PGD step is therefore non-canonical, which is harmless at top
level (unrolled: XLA canonicalises it) and several times slower in ``lax.fori_loop``.

The fix here does XLA's canonicalisation ourselves, in the jaxpr, before
lowering: each non-canonical convolution becomes explicit transposes around a
canonical ``NHWC/HWIO/NHWC`` one (same arithmetic, same results), and the kernel
transposes, which only depend on loop-invariant values (the parameters), are
computed once before the loop instead of in every iteration. The loop stays a
loop, so compile time does not grow with the number of steps.

Both functions always rewrite: ``parts.attack_ops`` injects them on CPU only (GPU/TPU
pick their own conv layouts, so elsewhere the attacks use plain ``lax.fori_loop``).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

__all__ = ['attack_loop', 'canonicalize_convs', 'count_noncanonical_convs']

_CONV = lax.conv_general_dilated_p
# Call-like primitives whose body is simply inlined (XLA inlines them anyway),
# which also lets the kernel transposes inside them be hoisted out of the loop.
_INLINE = ('jit', 'pjit', 'closed_call', 'core_call')


def _canonical_specs(n: int):
  spatial = tuple(range(1, n - 1))
  lhs = (0, n - 1) + spatial                    # NHWC: batch, feature, spatial
  rhs = (n - 1, n - 2) + tuple(range(n - 2))    # HWIO: out, in, spatial
  return lhs, rhs, lhs


def _is_canonical(params) -> bool:
  dn = params['dimension_numbers']
  n = len(dn.lhs_spec)
  return (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == _canonical_specs(n)


def _transpose(x, perm):
  perm = tuple(int(p) for p in perm)
  return x if perm == tuple(range(len(perm))) else lax.transpose(x, perm)


def _canonical_kernel(rhs, dn):
  """The kernel in HWIO order (spatial dims in the order the conv uses them)."""
  spec = dn.rhs_spec
  return _transpose(rhs, tuple(spec[2:]) + (spec[1], spec[0]))


def _canonical_conv(lhs, rhs_hwio, params):
  """``conv_general_dilated`` with the same semantics, run as a canonical conv.

  ``rhs_hwio`` is the kernel already transposed by ``_canonical_kernel``.
  """
  dn = params['dimension_numbers']
  n = len(dn.lhs_spec)
  lhs_perm = (dn.lhs_spec[0],) + tuple(dn.lhs_spec[2:]) + (dn.lhs_spec[1],)
  out_perm = (dn.out_spec[0],) + tuple(dn.out_spec[2:]) + (dn.out_spec[1],)
  c_lhs, c_rhs, c_out = _canonical_specs(n)
  new = dict(params, dimension_numbers=lax.ConvDimensionNumbers(c_lhs, c_rhs, c_out))
  out = _CONV.bind(_transpose(lhs, lhs_perm), rhs_hwio, **new)
  inv = [0] * n
  for j, p in enumerate(out_perm):
    inv[p] = j
  return _transpose(out, inv)


def _iter_jaxprs(params):
  for v in params.values():
    for u in (v if isinstance(v, (tuple, list)) else (v,)):
      if isinstance(u, jcore.ClosedJaxpr):
        yield u.jaxpr
      elif isinstance(u, jcore.Jaxpr):
        yield u


def count_noncanonical_convs(jaxpr) -> int:
  """Non-canonical convolutions in a (closed) jaxpr, sub-jaxprs included."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  n = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive is _CONV and not _is_canonical(eqn.params):
      n += 1
    for sub in _iter_jaxprs(eqn.params):
      n += count_noncanonical_convs(sub)
  return n


def _rewrite_closed(cj: jcore.ClosedJaxpr) -> jcore.ClosedJaxpr:
  """Same signature, canonical convolutions (for while/scan/cond/custom_* bodies)."""
  if not count_noncanonical_convs(cj.jaxpr):
    return cj
  avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype,
                                weak_type=getattr(v.aval, 'weak_type', False))
           for v in cj.jaxpr.invars]
  new = jax.make_jaxpr(lambda *a: _eval(cj.jaxpr, cj.consts, a))(*avals)
  return new


def _rewrite_params(params):
  new, changed = {}, False
  for k, v in params.items():
    if isinstance(v, jcore.ClosedJaxpr):
      nv = _rewrite_closed(v)
    elif isinstance(v, tuple) and v and all(isinstance(u, jcore.ClosedJaxpr) for u in v):
      nv = tuple(_rewrite_closed(u) for u in v)
    else:
      nv = v
    changed |= nv is not v
    new[k] = nv
  return new, changed


def _eval(jaxpr: jcore.Jaxpr, consts: Sequence[Any], args: Sequence[Any],
          env: Optional[dict] = None, skip: frozenset = frozenset()):
  """Evaluates ``jaxpr`` under the current trace with canonical convolutions.

  ``env`` pre-binds variables (hoisted values); equations in ``skip`` (indices)
  are not evaluated because their outputs are already in ``env``.
  """
  env = {} if env is None else dict(env)

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  for v, x in zip(jaxpr.constvars, consts):
    env.setdefault(v, x)
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  for idx, eqn in enumerate(jaxpr.eqns):
    if idx in skip:
      continue
    invals = [read(v) for v in eqn.invars]
    prim = eqn.primitive
    if prim is _CONV and not _is_canonical(eqn.params):
      dn = eqn.params['dimension_numbers']
      outs = [_canonical_conv(invals[0], _canonical_kernel(invals[1], dn), eqn.params)]
    elif prim.name in _INLINE and 'jaxpr' in eqn.params and isinstance(
        eqn.params['jaxpr'], jcore.ClosedJaxpr):
      cj = eqn.params['jaxpr']
      outs = _eval(cj.jaxpr, cj.consts, invals)
    elif prim.name in _INLINE and 'call_jaxpr' in eqn.params:
      cj = eqn.params['call_jaxpr']
      if isinstance(cj, jcore.ClosedJaxpr):
        outs = _eval(cj.jaxpr, cj.consts, invals)
      else:
        outs = _eval(cj, (), invals)
    else:
      params, _ = _rewrite_params(eqn.params)
      bind_params = prim.get_bind_params(params)
      with eqn.ctx.manager:
        ans = prim.bind(*invals, **bind_params)
      outs = ans if prim.multiple_results else [ans]
    for v, x in zip(eqn.outvars, outs):
      if not isinstance(v, jcore.DropVar):
        env[v] = x
  return [read(v) for v in jaxpr.outvars]


def canonicalize_convs(fn: Callable) -> Callable:
  """``fn`` with every convolution (nested calls and loops included) canonical.

  Pure function transform: same convolution arithmetic, only explicit
  transposes added. Apply it to the *differentiated* function (e.g. the body of
  a ``lax.while_loop``/``scan`` that already contains ``jax.grad``), not before
  ``jax.grad``. Unlike ``attack_loop`` it does not hoist the kernel transposes out
  of the enclosing loop (a small share of the time: docs/PERFORMANCE.md).
  """

  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    outs = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)
  return wrapped


def _hoistable(jaxpr: jcore.Jaxpr):
  """Equations that compute canonical conv kernels from loop invariants only.

  Invariants are the jaxpr's constvars (values the body closes over: the
  parameters). Returns (equation indices to hoist, variables to precompute).
  Only chains that end in a convolution's kernel are hoisted: they are
  weight-sized, whereas hoisting e.g. broadcasts would only cost memory.
  """
  known = set(jaxpr.constvars)
  producer = {}
  for idx, eqn in enumerate(jaxpr.eqns):
    ok = (not eqn.effects and not list(_iter_jaxprs(eqn.params)) and
          all(isinstance(v, jcore.Literal) or v in known for v in eqn.invars))
    for v in eqn.outvars:
      producer[v] = idx
      if ok:
        known.add(v)
  targets = [eqn.invars[1] for eqn in jaxpr.eqns
             if eqn.primitive is _CONV and not isinstance(eqn.invars[1], jcore.Literal)
             and eqn.invars[1] in known and eqn.invars[1] in producer]
  hoist, stack = set(), list(targets)
  while stack:
    v = stack.pop()
    idx = producer.get(v)
    if idx is None or idx in hoist:
      continue
    hoist.add(idx)
    stack.extend(u for u in jaxpr.eqns[idx].invars
                 if not isinstance(u, jcore.Literal) and u in producer)
  # Values the remaining equations (or the outputs) read from hoisted ones.
  needed = []
  seen = set()
  for idx, eqn in enumerate(jaxpr.eqns):
    if idx in hoist:
      continue
    for u in eqn.invars:
      if not isinstance(u, jcore.Literal) and producer.get(u) in hoist and u not in seen:
        seen.add(u)
        needed.append(u)
  for u in jaxpr.outvars:
    if not isinstance(u, jcore.Literal) and producer.get(u) in hoist and u not in seen:
      seen.add(u)
      needed.append(u)
  return frozenset(hoist), needed


def _eval_subset(jaxpr, consts, indices, outvars):
  """Evaluates only the equations ``indices`` (all depend on constvars only)."""
  env = dict(zip(jaxpr.constvars, consts))

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  for idx, eqn in enumerate(jaxpr.eqns):
    if idx not in indices:
      continue
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
      ans = eqn.primitive.bind(*[read(v) for v in eqn.invars], **bind_params)
    outs = ans if eqn.primitive.multiple_results else [ans]
    for v, x in zip(eqn.outvars, outs):
      env[v] = x
  return [env[v] for v in outvars]


def attack_loop(body: Callable, init: Any, steps: int, *,
                unroll: int | bool = 1, hoist: bool = True):
  """``lax.fori_loop(0, steps, body, init)`` that keeps convolutions fast on XLA:CPU.

  ``body(i, carry) -> carry`` as for ``fori_loop``; it may close over the
  parameters (they are the loop invariants whose kernel transposes get hoisted;
  ``hoist=False`` leaves them in the body). Compile time is independent of
  ``steps``; ``unroll`` is passed to ``fori_loop`` unchanged. A body without
  non-canonical convolutions runs in ``lax.fori_loop`` as it is.
  """
  i0 = jax.ShapeDtypeStruct((), jnp.int32)
  # Stage 1: canonical convs, call primitives inlined, as one flat jaxpr.
  closed, out_shape = jax.make_jaxpr(body, return_shape=True)(i0, init)
  if not count_noncanonical_convs(closed.jaxpr):
    return lax.fori_loop(0, steps, body, init, unroll=unroll)
  out_tree = jax.tree.structure(out_shape)
  flat = jax.make_jaxpr(
      lambda i, c: _eval(closed.jaxpr, closed.consts, [i] + jax.tree.leaves(c)))(i0, init)
  jaxpr, consts = flat.jaxpr, flat.consts
  # Stage 2: precompute loop-invariant kernel transposes once.
  env = {}
  skip = frozenset()
  if hoist:
    skip, needed = _hoistable(jaxpr)
    if skip:
      env = dict(zip(needed, _eval_subset(jaxpr, consts, skip, needed)))

  def loop_body(i, carry):
    outs = _eval(jaxpr, consts, [i] + jax.tree.leaves(carry), env=env, skip=skip)
    return jax.tree.unflatten(out_tree, outs)

  return lax.fori_loop(0, steps, loop_body, init, unroll=unroll)

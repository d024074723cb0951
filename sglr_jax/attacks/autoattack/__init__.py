"""AutoAttack's standard ensemble (Croce and Hein, 2020): APGD-CE, APGD-T, FAB-T, Square.

The 'rand' version (APGD-CE and APGD-DLR with EOT) is for models with a randomised
forward pass (``run_autoattack(..., version='rand', randomised=True)``).

Runs the attacks in order, each only on the points still robust, and keeps for every
point the first adversarial example found (the worst case over the ensemble). As in the
reference, an attack's restarts and target classes each work only on the points still
robust, and Square's queries only on the points still correctly classified: between
runs (and every ``square_queries_per_call`` queries) the remaining points are gathered
again into batches (``runner``). Every batch has ``batch_size`` rows (padded with masked
copies), so each program (``programs``) compiles once whatever the robust set. All
programs are compiled up front, several at a time, and over a mesh each device runs
them on its own rows (``shard_map``, no collectives).

Seeding: attack ``a`` on the point with index ``i`` in ``x`` draws from
``fold_in(fold_in(key, a), i)``, so results are reproducible bit for bit for a key and
batch size, and do not depend on which other points share a batch.
"""
from __future__ import annotations

from sglr_jax.attacks.autoattack.config import (ATTACKS, BUDGETS, STANDARD_ATTACKS,
                                                VERSIONS, AutoAttackConfig, version_setup)
from sglr_jax.attacks.autoattack.runner import compile_attacks, predict, run_autoattack

__all__ = ['ATTACKS', 'BUDGETS', 'STANDARD_ATTACKS', 'VERSIONS', 'AutoAttackConfig',
           'compile_attacks', 'predict', 'run_autoattack', 'version_setup']

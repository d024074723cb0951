"""The ensemble's attacks and their parameters (the reference's 'standard' version)."""
from __future__ import annotations

import dataclasses

NORMS = ('Linf', 'L2')
STANDARD_ATTACKS = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
ATTACKS = ('apgd-ce', 'apgd-t', 'fab-t', 'square', 'apgd-dlr')  # index = key stream


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
  """Parameters of each attack; the defaults are the reference's 'standard' version."""
  norm: str = 'Linf'
  rho: float = 0.75
  apgd_n_iter: int = 100
  apgd_n_restarts: int = 1
  apgd_t_n_iter: int = 100
  apgd_t_n_restarts: int = 1
  apgd_t_n_target_classes: int = 9
  fab_n_iter: int = 100
  fab_n_restarts: int = 1
  fab_n_target_classes: int = 9
  fab_alpha_max: float = 0.1
  fab_eta: float = 1.05
  fab_beta: float = 0.9
  square_n_queries: int = 5000
  square_p_init: float = 0.8
  # How often Square's remaining points are gathered again (a throughput knob only).
  square_queries_per_call: int = 100
  # APGD's gradient averaged over this many draws of a randomised model (EOT; the
  # 'rand' version). Moot for a deterministic model.
  eot_iter: int = 1
  # Not in the reference: end APGD / FAB iterations once every point of a batch is
  # decided. Same robust accuracy, faster on weak models, but the adversarial points
  # returned are earlier iterates (APGD) or not the smallest found (FAB).
  early_stop: bool = False


# eval.autoattack_budget: 'standard' is the reference's; 'smoke' only checks the plumbing
# (tests, dry runs) and gives no robustness number worth reporting.
BUDGETS = {
    'standard': AutoAttackConfig(),
    'smoke': AutoAttackConfig(apgd_n_iter=10, apgd_t_n_iter=10, apgd_t_n_target_classes=3,
                              fab_n_iter=10, fab_n_target_classes=3, square_n_queries=100,
                              square_queries_per_call=50),
}


VERSIONS = ('standard', 'rand')


def version_setup(version: str, attacks, cfg: AutoAttackConfig):
  """``(attacks, cfg)`` of a version, the reference's ``set_version``: 'standard' keeps
  them (``attacks`` None: the standard four); 'rand', for models with a randomised
  forward pass, runs APGD-CE and APGD-DLR (unless ``attacks`` says otherwise) with one
  restart and the gradient averaged over twenty draws."""
  if version == 'standard':
    return tuple(attacks or STANDARD_ATTACKS), cfg
  if version == 'rand':
    return (tuple(attacks or ('apgd-ce', 'apgd-dlr')),
            dataclasses.replace(cfg, apgd_n_restarts=1, eot_iter=20))
  raise ValueError(f'version={version!r}; allowed: {", ".join(VERSIONS)}')


def n_runs(name: str, cfg: AutoAttackConfig) -> int:
  """Restarts x target classes of an attack (Square: its restarts)."""
  return {'apgd-ce': cfg.apgd_n_restarts, 'apgd-dlr': cfg.apgd_n_restarts,
          'apgd-t': cfg.apgd_t_n_target_classes * cfg.apgd_t_n_restarts,
          'fab-t': cfg.fab_n_target_classes * cfg.fab_n_restarts, 'square': 1}[name]


def check_attack(name: str, cfg: AutoAttackConfig):
  """Raises if the ensemble cannot run attack ``name`` with ``cfg``."""
  if name not in ATTACKS:
    raise ValueError(f'attack {name!r} is unknown; allowed: {", ".join(ATTACKS)}')
  if cfg.norm not in NORMS:
    raise ValueError(f'norm={cfg.norm!r}; allowed: {", ".join(NORMS)}')

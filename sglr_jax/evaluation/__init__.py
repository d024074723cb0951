"""Evaluation of trained checkpoints: ``evaluate.evaluate(config, workdir)`` runs the
evaluators (natural + PGD, calibration, AutoAttack, transfer) on best and final and
writes the one Best / Final / Diff table (``results``)."""

"""Platform-specific parts that the experiment builder injects into the core.

The core (data, models, attacks, objectives, training, evaluation) never imports this
package: models take their ``conv``/``pool`` and attacks their ``AttackOps`` as
arguments, and only the entry point / experiment builder picks a platform's versions.
"""

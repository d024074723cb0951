"""Training: the state and optimizer (``state``), the pure SPMD train step (``step``),
and the loop around it (``loop.train_and_evaluate``) with its parts: preemption,
checkpoint progress / resume (``progress``) and the per-epoch record (``summary``)."""

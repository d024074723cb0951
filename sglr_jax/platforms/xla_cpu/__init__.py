"""XLA:CPU workarounds: faster-differentiating convs/pools, a canonical-conv attack loop,
host-device and conv-library flags.

Only the entry point and the experiment builder import this package, and only when the
backend is CPU (``parts`` says what they inject). It imports nothing itself, so that
``host_devices`` can run before jax is imported (XLA_FLAGS are read once, at start).
"""

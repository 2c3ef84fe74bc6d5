import os

# 8 CPU devices for the data-parallel tests (must be set before JAX starts); single-device code is
# unaffected: it runs on device 0.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

# Shapes must match exactly; an accidental broadcast is a bug, not a convenience.
jax.config.update("jax_numpy_rank_promotion", "raise")

"""Native kernels reached through `jax.ffi` (optional: jaxnets runs without them, slower)."""

import jax

# Shapes must match exactly; an accidental broadcast is a bug, not a convenience.
jax.config.update("jax_numpy_rank_promotion", "raise")

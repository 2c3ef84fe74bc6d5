"""jaxnets: ResNeXt, MobileNetV2 and the ENAS macro search space in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import jaxnets` stays light; the loader imports jax and orbax on first use.
    if name == "load_checkpoint":
        from jaxnets.checkpoint_loading import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["load_checkpoint"]

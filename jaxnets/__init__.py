"""jaxnets: ResNeXt, MobileNetV2 and the ENAS macro search space in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import jaxnets` stays light; the loader imports jax and orbax on first use.
    if name in ("load_checkpoint", "read_class_names"):
        from jaxnets import checkpoint_loading

        return getattr(checkpoint_loading, name)
    if name == "predict":
        from jaxnets.predict import predict

        return predict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["load_checkpoint", "predict", "read_class_names"]

"""jaxnets: ResNeXt, MobileNetV2 and the ENAS macro search space in JAX/Flax."""

__version__ = "0.1.0"

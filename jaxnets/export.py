"""A trained run as a function of images alone, and as a file that runs without jaxnets.

    python -m jaxnets.export WORKDIR --format stablehlo --output model.stablehlo

    served = jaxnets.export.serving_function(WORKDIR)   # served.logits(uint8 images) -> logits
    jaxnets.export.export(WORKDIR, "model.stablehlo")

The served function takes a batch of uint8 images at the run's evaluation size, [N, H, W, C] (N free), and returns
float32 logits [N, classes]. The evaluation's preprocessing after resizing (scaling to [0, 1], the dataset's mean
and std) is inside it; the model's evaluation variables (the EMA's parameters where the run kept one) are
constants; BatchNorm runs in inference mode; the convolutions are XLA's own (jaxnets' oneDNN kernels are a CPU
custom call that no other runtime has, and `jax.export` refuses them).

Formats:
- `stablehlo`: `jax.export`, serialized, lowered for CPU, GPU (CUDA) and TPU. Run it in any JAX, jaxnets or not:
  `jax.export.deserialize(open(PATH, "rb").read()).call(images)`. The class names are written beside it
  (PATH + ".classes.txt", one per line, in label order): the format has no place for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import export as jax_export

from jaxnets.checkpoints import load_checkpoint, read_meta, resolve_step_dir
from jaxnets.data.datasets import dataset_spec
from jaxnets.errors import UserError
from jaxnets.models import layers

FORMATS = ("stablehlo",)
# What the exported program runs on: every platform JAX lowers for (XLA's convolutions lower on all of them).
PLATFORMS = ("cpu", "cuda", "tpu")


@dataclasses.dataclass(frozen=True)
class Served:
    """A trained run as a function of uint8 images [N, *image_shape] -> float32 logits [N, len(class_names)]."""

    logits: Callable[[jax.Array], jax.Array]
    image_shape: tuple[int, int, int]  # (H, W, C): the run's evaluation size
    class_names: tuple[str, ...]  # label order; "0", "1", ... where the dataset named none
    dataset_family: str  # how the run's evaluation resized its images ("imagenet": shorter side, centre crop)


def serving_function(workdir) -> Served:
    """The run in `workdir` (or one of its steps) as a function of uint8 images (see the module's docstring)."""
    step_dir = resolve_step_dir(workdir)  # CheckpointNotFoundError: one line naming the path
    model, variables, config = load_checkpoint(step_dir)
    meta = read_meta(step_dir)
    spec = dataset_spec(config.dataset)
    channels = (1, 1, 1, -1)  # per channel, over [N, H, W, C] (the suite forbids implicit rank promotion)
    mean = jnp.asarray(spec.mean, jnp.float32).reshape(channels)
    std = jnp.asarray(spec.std, jnp.float32).reshape(channels)

    def logits(images):
        x = (images.astype(jnp.float32) / 255.0 - mean) / std
        return model.apply(variables, x, train=False)

    names = tuple(meta["class_names"]) or tuple(str(i) for i in range(meta["num_classes"]))
    return Served(logits, tuple(meta["image_shape"]), names, spec.family)


def export(workdir, output, format: str = "stablehlo") -> list[str]:  # noqa: A002  (the command line's name)
    """Writes the run in `workdir` as `format` to `output`; returns the paths written."""
    if format not in FORMATS:
        raise UserError(f"unknown export format {format!r}; one of: {', '.join(FORMATS)}")
    served = serving_function(workdir)
    height, width, channels = served.image_shape
    images = jax.ShapeDtypeStruct(jax_export.symbolic_shape(f"n, {height}, {width}, {channels}"), jnp.uint8)
    with layers.conv_lowering("xla"):  # (traced here, inside the context)
        exported = jax_export.export(jax.jit(served.logits), platforms=PLATFORMS)(images)
    output = os.fspath(output)
    _write(output, exported.serialize())
    _write(output + ".classes.txt", "".join(f"{name}\n" for name in served.class_names).encode())
    return [output, output + ".classes.txt"]


def _write(path: str, data: bytes) -> None:
    temporary = f"{path}.tmp"  # written whole, then renamed: never a half-written file under the name
    with open(temporary, "wb") as f:
        f.write(data)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxnets.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="a run's workdir, or one of its checkpoints/<step>")
    parser.add_argument("--format", default="stablehlo", help=f"one of: {', '.join(FORMATS)}")
    parser.add_argument("--output", required=True, help="the file to write")
    args = parser.parse_args(argv)
    try:
        written = export(args.workdir, args.output, args.format)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path} ({os.path.getsize(path):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

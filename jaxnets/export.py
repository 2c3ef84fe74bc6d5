"""A trained run as a function of images alone, and as a file that runs without jaxnets.

    python -m jaxnets.export WORKDIR --format {stablehlo,onnx,savedmodel,tflite} --output PATH

    served = jaxnets.export.serving_function(WORKDIR)   # served.logits(uint8 images) -> logits
    jaxnets.export.export(WORKDIR, "model.stablehlo")

The served function takes a batch of uint8 images at the run's evaluation size, [N, H, W, C] (N free), and returns
float32 logits [N, classes]. The evaluation's preprocessing after resizing (scaling to [0, 1], the dataset's mean
and std) is inside it. A run on sound takes float32 clips instead, [N, samples] at its config.audio.sample_rate
(mono, clip_seconds long: cut and resample before), named `clips`, and has the log-mel front end inside. The
model's evaluation variables (the EMA's parameters where the run kept one) are constants; every BatchNorm that
follows a convolution is folded into it (`jaxnets.models.folding`), the others run in inference mode; the
convolutions are XLA's own (jaxnets' oneDNN kernels are a CPU custom call that no other runtime has, and
`jax.export` refuses them).

Formats (`--format`), each tested in its own runtime against the JAX model:
- `stablehlo`: `jax.export`, serialized, lowered for CPU, GPU (CUDA) and TPU. Any JAX runs it, jaxnets or not:
  `jax.export.deserialize(open(PATH, "rb").read()).call(images)`.
- `onnx`: an ONNX model through jax2onnx (opset 21, recorded in the file), for onnxruntime and the other ONNX
  runtimes: input `images` (uint8, batch free), output `logits`; the class names are in its metadata
  (`class_names`, one per line).
- `savedmodel`: a TensorFlow SavedModel (a directory) through `jax2tf` (the same StableHLO, for CPU, GPU and TPU,
  in TensorFlow's XlaCallModule): signature `serving_default`, input `images`, output `logits`; the class names
  are in it too (the variable `class_names`). TensorFlow Serving and `tf.saved_model.load` run it.
- `tflite`: the same function converted by TensorFlow's LiteRT converter to TFLite's own operators (CONV_2D,
  DEPTHWISE_CONV_2D, ...), for the LiteRT interpreter (`ai_edge_litert`) on phones and edge devices; one image a
  call ([1, H, W, C]); the class names are in the model's metadata (`class_names`, one per line).
Every format also gets PATH + ".classes.txt": the class names, one per line, in label order.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import logging
import os
import shutil
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import export as jax_export

from jaxnets.checkpoints import load_checkpoint, read_meta, resolve_step_dir
from jaxnets.data.datasets import check_data_config, dataset_spec
from jaxnets.errors import UserError
from jaxnets.models import layers
from jaxnets.models.folding import fold_batch_norm, folding_error
from jaxnets.sound.frontend import network_input

FORMATS = ("stablehlo", "onnx", "savedmodel", "tflite")
# Of the largest logit: the folded arithmetic's float32 round-off is ~1e-7 (1e-6 in a 224 px network), a misfold's
# error is of the logits' own size.
FOLDING_TOLERANCE = 1e-4

log = logging.getLogger("jaxnets")
ONNX_OPSET = 21  # onnxruntime 1.20 (2024) and later run it
# What the exported program runs on: every platform JAX lowers for (XLA's convolutions lower on all of them).
PLATFORMS = ("cpu", "cuda", "tpu")


@dataclasses.dataclass(frozen=True)
class Served:
    """A trained run as a function of uint8 images [N, *image_shape] -> float32 logits [N, len(class_names)] (or of
    float32 clips [N, samples], for sound)."""

    logits: Callable[[jax.Array], jax.Array]
    image_shape: tuple[int, ...]  # of one input: (H, W, C), the run's evaluation size; (samples,) for sound
    class_names: tuple[str, ...]  # label order; "0", "1", ... where the dataset named none
    eval_crop: str  # how the run's evaluation sized its images (jaxnets.data.datasets.EVAL_CROPS)
    input_name: str = "images"  # "clips" for sound
    input_dtype: str = "uint8"  # "float32" for sound (samples in [-1, 1])


def serving_function(workdir, fold: bool = True) -> Served:
    """The run in `workdir` (or one of its steps) as a function of uint8 images (see the module's docstring);
    `fold`: BatchNorm folded into the convolutions, kept unfolded (with a warning) where that changes the logits."""
    step_dir = resolve_step_dir(workdir)  # CheckpointNotFoundError: one line naming the path
    meta = read_meta(step_dir)
    if meta["config"].get("task") == "search":
        raise UserError(f"{step_dir} is an ENAS search (its shared network takes an architecture as an input): "
                        "train the arc it found (WORKDIR/final_config.py) and export that run")
    model, variables, config = load_checkpoint(step_dir)
    spec = dataset_spec(config.dataset)
    names = tuple(meta["class_names"]) or tuple(str(i) for i in range(meta["num_classes"]))
    if spec.family == "audio":
        sound = check_data_config(config).sound
        return served_sound_model(model, variables, sound=sound, class_names=names, fold=fold)
    return served_model(model, variables, image_shape=tuple(meta["image_shape"]), mean=spec.mean, std=spec.std,
                        class_names=names, eval_crop=config.get("eval_crop", None) or spec.eval_crop, fold=fold)


def served_model(model, variables, *, image_shape: tuple[int, int, int], mean, std, class_names: tuple[str, ...],
                 eval_crop: str = "resize", fold: bool = True) -> Served:
    """Any model's inference as a function of uint8 images normalised by `mean` and `std` (per channel, on [0, 1]):
    what `serving_function` makes of a run, and what benchmarks/inference.py exports."""
    channels = (1, 1, 1, -1)  # per channel, over [N, H, W, C] (the suite forbids implicit rank promotion)
    mean = jnp.asarray(mean, jnp.float32).reshape(channels)
    std = jnp.asarray(std, jnp.float32).reshape(channels)
    network = _inference(model, variables, tuple(image_shape), fold)

    def logits(images):
        return network((images.astype(jnp.float32) / 255.0 - mean) / std)

    return Served(logits, tuple(image_shape), tuple(class_names), eval_crop)


def served_sound_model(model, variables, *, sound, class_names: tuple[str, ...], fold: bool = True) -> Served:
    """A model trained on sound as a function of float32 clips [N, sound.clip_samples]: the log-mel front end
    (jaxnets.sound.frontend) and the network, as the run's evaluation of one centre crop."""
    network = _inference(model, variables, sound.input_shape, fold)

    def logits(clips):
        return network(network_input(clips, sound))

    return Served(logits, (sound.clip_samples,), tuple(class_names), "centre", input_name="clips",
                  input_dtype="float32")


def _inference(model, variables, input_shape: tuple[int, ...], fold: bool):
    """The model's inference on inputs [N, *input_shape]; with `fold`, its BatchNorm folded into the convolutions
    where that leaves the logits as they are."""
    network = functools.partial(model.apply, variables, train=False)
    if not fold:
        return network
    example = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    folded = fold_batch_norm(model, variables, example)
    error = folding_error(model, variables, folded, example)
    if error <= FOLDING_TOLERANCE:
        return folded
    # a convolution's output used beyond its BatchNorm: exact but unfolded
    log.warning("export: BatchNorm left unfolded: folding it changed the logits by %.1e of their largest "
                "(a convolution's output used beyond its BatchNorm?)", error)
    return network


def export(workdir, output, format: str = "stablehlo") -> list[str]:  # noqa: A002  (the command line's name)
    """Writes the run in `workdir` as `format` to `output`, and its class names to `output` + ".classes.txt";
    returns the paths written."""
    _check_format(format)  # (before the checkpoint is read)
    return write(serving_function(workdir), output, format)


def write(served: Served, output, format: str) -> list[str]:  # noqa: A002
    """Writes a served function (a run's, or any model's: benchmarks/inference.py) as `format`."""
    _check_format(format)
    served = dataclasses.replace(served, logits=_with_xla_convolutions(served.logits))
    output = os.fspath(output)
    {"stablehlo": _stablehlo, "onnx": _onnx, "savedmodel": _savedmodel, "tflite": _tflite}[format](served, output)
    _write(output + ".classes.txt", "".join(f"{name}\n" for name in served.class_names).encode())
    return [output, output + ".classes.txt"]


def _check_format(format: str) -> None:  # noqa: A002
    if format not in FORMATS:
        raise UserError(f"unknown export format {format!r}; one of: {', '.join(FORMATS)}")


def _with_xla_convolutions(logits):
    """`logits` traced with XLA's own convolutions, wherever it is traced (jax.export, jax2tf, a SavedModel's
    save): jaxnets' oneDNN kernels are a CPU custom call that no other runtime has, which jax.export refuses."""

    def portable(images):
        with layers.conv_lowering("xla"):
            return logits(images)

    return portable


def _polymorphic_batch(served: Served) -> str:
    return ", ".join(["n", *map(str, served.image_shape)])  # the batch size is left free


def _stablehlo(served: Served, output: str) -> None:
    images = jax.ShapeDtypeStruct(jax_export.symbolic_shape(_polymorphic_batch(served)), served.input_dtype)
    exported = jax_export.export(jax.jit(served.logits), platforms=PLATFORMS)(images)
    _write(output, exported.serialize())


def _onnx(served: Served, output: str) -> None:
    try:
        import jax2onnx  # optional (`pip install jaxnets[export]`), and only this format needs it
    except ImportError:
        raise UserError("the onnx format needs jax2onnx and onnxruntime: pip install 'jaxnets[export]'") from None

    images = jax.ShapeDtypeStruct(jax_export.symbolic_shape(_polymorphic_batch(served)), served.input_dtype)
    # jax2onnx prints and logs as it imports its plugins (some of which are for libraries jaxnets does not use):
    # its warnings stay out of the command's output, the conversion's errors do not.
    logging.getLogger("jax2onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        model = jax2onnx.to_onnx(served.logits, [images], model_name="jaxnets", opset=ONNX_OPSET,
                                 input_names=[served.input_name], output_names=["logits"])
    model.metadata_props.add(key="class_names", value="\n".join(served.class_names))
    _write(output, model.SerializeToString())


def _tf_module(served: Served, batch: int | None = None):
    """A tf.Module with the served function as `serve` (images -> {"logits"}) and the `class_names`; `batch`
    fixes the batch size (None: free)."""
    from jax.experimental import jax2tf  # heavy (TensorFlow: _savedmodel and _tflite, which call this, import it first)

    from jaxnets.data.tf_imports import tf  # heavy: only the TensorFlow formats need it (without Keras)

    shape = _polymorphic_batch(served) if batch is None else None
    logits = jax2tf.convert(served.logits, polymorphic_shapes=[f"({shape})" if shape else None],
                            with_gradient=False, native_serialization_platforms=PLATFORMS)
    module = tf.Module()
    signature = [tf.TensorSpec([batch, *served.image_shape], served.input_dtype, name=served.input_name)]
    module.serve = tf.function(lambda inputs: {"logits": logits(inputs)}, input_signature=signature, autograph=False)
    module.class_names = tf.Variable(list(served.class_names), trainable=False)  # saved with the model
    return module


def _savedmodel(served: Served, output: str) -> None:
    from jaxnets.data.tf_imports import tf  # heavy: only the TensorFlow formats need it (without Keras)

    module = _tf_module(served)
    temporary = f"{output}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    tf.saved_model.save(module, temporary, signatures={"serving_default": module.serve})
    if os.path.isdir(output):  # replaced only once the new one is whole
        shutil.rmtree(output)
    os.replace(temporary, output)


def _tflite(served: Served, output: str) -> None:
    from jaxnets.data.tf_imports import tf  # heavy: only the TensorFlow formats need it (without Keras)

    # One image a call, as on a phone: with a free batch size the converter meets gathers it cannot express in
    # TFLite's operators (the ENAS child's strided slices of an array of unknown batch become dynamic gathers).
    module = _tf_module(served, batch=1)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    _write(output, _with_tflite_metadata(converter.convert(), "class_names", "\n".join(served.class_names)))


def _with_tflite_metadata(flatbuffer: bytes, name: str, value: str) -> bytes:
    """The TFLite model with a metadata entry (the schema's `Model.metadata`: a name and a buffer) added, through
    TensorFlow's own flatbuffer tools."""
    from tensorflow.lite.python import schema_py_generated as schema  # heavy: TensorFlow, as the converter
    from tensorflow.lite.tools import flatbuffer_utils  # heavy: TensorFlow's flatbuffer tools

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = list(value.encode())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


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

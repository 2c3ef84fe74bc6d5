"""A trained run as a file that runs without jaxnets (`python -m jaxnets.export`: StableHLO, a TF SavedModel,
TFLite, each run in its own runtime) and as a classifier of image files (`python -m jaxnets.classify`): the same
logits as the JAX model for every family, the run's test accuracy reproduced, and one line for each bad input."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import built_once, load_recipe
from PIL import Image

import jaxnets
from jaxnets import data
from jaxnets.classify import Classifier
from jaxnets.classify import main as classify_main
from jaxnets.errors import UserError
from jaxnets.export import FORMATS, export, serving_function
from jaxnets.export import main as export_main
from jaxnets.models import create_model
from jaxnets.train import train_and_evaluate
from jaxnets.train.reporting import last_evaluation

# One short run per family on the bundled digits (8x8 grey; MobileNetV2 and the ENAS child resized to 16).
FAMILIES = {
    "resnext": {"num_train_steps": 40},  # the quickstart's network, trained enough to score above chance
    "mobilenet": {"model": "mobilenet_v2", "image_size": 16, "num_train_steps": 2,  # every stage, one block each
                  "model_overrides": {"width_multiplier": 0.25, "stages": tuple(
                      (t, c, 1, s) for t, c, _, s in create_model("mobilenet_v2").stages)}},
    "enas": {"model": "enas_macro", "image_size": 16, "num_train_steps": 2,
             "model_overrides": {"num_layers": 3, "num_filters": 8, "arc": "0  1 0  3 1 1"}},
}


def train_each_family(root) -> None:
    for family, fields in FAMILIES.items():
        config = load_recipe("quickstart", eval_every_epochs=100.0, steps_per_dispatch=1, **{
            k: v for k, v in fields.items() if k != "model_overrides"})
        if "model_overrides" in fields:
            config.model_overrides = fields["model_overrides"]
        train_and_evaluate(config, str(root / family), devices=jax.devices()[:1])


@pytest.fixture(scope="session")
def runs(tmp_path_factory, worker_id):
    """{family: workdir} of the runs above (one device, evaluated once at the end), trained once for the session."""
    root = built_once(tmp_path_factory, worker_id, "export_runs", train_each_family)
    return {family: root / family for family in FAMILIES}


def reference_logits(workdir, images: np.ndarray) -> np.ndarray:
    """The JAX model as a notebook opens it, on uint8 images: normalised as the run's evaluation normalises."""
    model, variables, config = jaxnets.load_checkpoint(workdir)
    spec = data.dataset_spec(config.dataset)
    x = (images.astype(np.float32) / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, x))


def run_exported(format: str, path, images: np.ndarray) -> np.ndarray:  # noqa: A002
    """The exported file in its own runtime: JAX alone, TensorFlow, or the LiteRT interpreter."""
    if format == "stablehlo":
        return np.asarray(jax.export.deserialize(open(path, "rb").read()).call(images))
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["logits"], {"images": images})[0]
    if format == "savedmodel":
        from jaxnets.data.tf_imports import tf

        return tf.saved_model.load(str(path)).signatures["serving_default"](images=tf.constant(images))[
            "logits"].numpy()
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (given,), (logits,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(given["shape"]) == [1, *images.shape[1:]] and given["dtype"] == np.uint8
    outputs = []
    for image in images:  # one image a call, as the file is made
        interpreter.set_tensor(given["index"], image[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(logits["index"])[0])
    return np.stack(outputs)


@pytest.mark.parametrize("format", FORMATS)
def test_each_familys_export_gives_the_models_logits(format, runs, tmp_path):  # noqa: A002
    rng = np.random.default_rng(0)
    for family, workdir in runs.items():
        path = tmp_path / f"{family}.{format}"
        assert export_main([str(workdir), "--format", format, "--output", str(path)]) == 0
        image_shape = serving_function(workdir).image_shape
        assert image_shape == ((8, 8, 1) if family == "resnext" else (16, 16, 1))  # the digits are grey
        for batch in (1, 5):
            images = rng.integers(0, 256, (batch, *image_shape), dtype=np.uint8)
            expected = reference_logits(workdir, images)
            got = run_exported(format, path, images)
            assert got.shape == expected.shape == (batch, 10), family
            rtol = 1e-3 if format == "tflite" else 1e-4  # (TFLite's own kernels)
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max(),
                                       err_msg=f"{format}, {family}")
        if format == "onnx" and family != "enas":  # every BN of ResNeXt and MobileNetV2 follows a convolution
            import onnx

            operators = {node.op_type for node in onnx.load(str(path)).graph.node}
            assert not {"BatchNormalization", "Sqrt"} & operators, (family, "BatchNorm is folded")
        names = list(jaxnets.read_class_names(workdir) or map(str, range(10)))
        assert (tmp_path / f"{family}.{format}.classes.txt").read_text().splitlines() == names
    if format == "stablehlo":
        assert set(jax.export.deserialize(path.read_bytes()).platforms) == {"cpu", "cuda", "tpu"}
    if format == "savedmodel":
        from jaxnets.data.tf_imports import tf

        assert [n.decode() for n in tf.saved_model.load(str(path)).class_names.numpy()] == names
    if format in ("onnx", "tflite"):
        assert embedded_class_names(format, path) == names
    if format == "onnx":
        import onnx

        model = onnx.load(str(path))
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [21]


def embedded_class_names(format: str, path) -> list[str]:  # noqa: A002
    """The class names an ONNX or TFLite file carries in its metadata, read with the format's own library."""
    if format == "onnx":
        import onnx

        return {p.key: p.value for p in onnx.load(str(path)).metadata_props}["class_names"].split("\n")
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    entries = {model.Metadata(i).Name().decode(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
    return model.Buffers(entries["class_names"]).DataAsNumpy().tobytes().decode().split("\n")


@pytest.mark.parametrize("format", FORMATS)
def test_the_exported_network_scores_the_runs_test_accuracy(format, runs, tmp_path):  # noqa: A002
    """The trained ResNeXt's exported file on the whole test split, as uint8 images: the accuracy the run logged
    at its last evaluation, to within one example."""
    workdir = runs["resnext"]
    (path, _) = export(workdir, tmp_path / f"model.{format}", format)
    config = jaxnets.load_checkpoint(workdir)[2]
    spec = data.dataset_spec(config.dataset)
    correct = count = 0
    for batch in data.eval_iterator(config, 64):
        pixels = (batch["image"] * np.asarray(spec.std) + np.asarray(spec.mean)) * 255.0  # the eval's own uint8s
        images = np.round(pixels).clip(0, 255).astype(np.uint8)
        predicted = run_exported(format, path, images).argmax(-1)
        correct += int(np.sum((predicted == batch["label"]) & batch["mask"]))
        count += int(batch["mask"].sum())
    logged = last_evaluation(workdir)
    assert count == 450 and abs(correct - round(logged["eval_top1"] * count)) <= 1, (correct, logged)
    assert logged["eval_top1"] > 0.3  # trained: chance is 0.1


def test_classify_prints_each_files_classes(runs, tmp_path, capsys):
    workdir = runs["resnext"]
    folder = tmp_path / "images"
    folder.mkdir()
    digits = np.load(jaxnets.data.__path__[0] + "/digits/digits.npz")
    images = (digits["images"][:3] * 16).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255, as the dataset's
    for i, image in enumerate(images):
        Image.fromarray(image).resize((32, 32), Image.Resampling.NEAREST).save(folder / f"{i}.png")
    assert classify_main([str(folder), "--workdir", str(workdir), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [str(folder / f"{i}.png") for i in range(3)]
    classifier = Classifier(workdir)
    probabilities = classifier(classifier.load(sorted(folder.iterdir())))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    for line, p in zip(lines, probabilities, strict=True):
        first, second = line.split()[1::2], line.split()[2::2]
        assert first[0] == classifier.class_names[int(np.argmax(p))] and float(second[0]) == pytest.approx(
            p.max(), abs=1e-3)
        assert len(first) == 2


@pytest.mark.parametrize("case", ["float", "size", "not_an_image", "no_checkpoint", "format"])
def test_each_bad_input_is_one_line(case, runs, tmp_path, capsys):
    workdir = runs["resnext"]
    if case in ("float", "size"):
        images = np.zeros((2, 8, 8, 1), np.float32) if case == "float" else np.zeros((2, 28, 28, 1), np.uint8)
        with pytest.raises(UserError, match=r"^images must be uint8 \[N, 8, 8, 1\] \(the run's evaluation size\), "
                                            rf"got {images.dtype} \[2, {images.shape[1]}, {images.shape[2]}, 1\]"):
            Classifier(workdir)(images)
        return
    if case == "not_an_image":
        (tmp_path / "notes.png").write_text("not a picture")
        code = classify_main([str(tmp_path / "notes.png"), "--workdir", str(workdir)])
        message = r"^error: \S+notes.png: not an image Pillow can read"
    elif case == "no_checkpoint":
        code = export_main([str(tmp_path), "--output", str(tmp_path / "m.stablehlo")])
        message = r"^error: no finished checkpoint in \S+"
    else:
        code = export_main([str(workdir), "--format", "keras", "--output", str(tmp_path / "m.keras")])
        message = r"^error: unknown export format 'keras'; one of: stablehlo, onnx, savedmodel, tflite"
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert re.match(message, err), err
    assert not list(tmp_path.glob("m.*")), "nothing written"


def test_the_served_function_is_the_jax_model(runs):
    """jaxnets.export.serving_function, jitted in this process, equals the model as a notebook opens it."""
    served = serving_function(runs["mobilenet"])
    images = np.random.default_rng(1).integers(0, 256, (2, *served.image_shape), dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(jax.jit(served.logits)(jnp.asarray(images))),
                               reference_logits(runs["mobilenet"], images), rtol=1e-5, atol=1e-5)

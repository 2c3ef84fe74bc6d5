"""Input pipelines: the bundled digits for real, CIFAR/ImageNet through tfds.testing.mock_data."""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import socket
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from jaxnets import data
from jaxnets.data import digits
from jaxnets.data.augmentation import Augmentation
from jaxnets.data.datasets import DIGITS_MEAN, DIGITS_STD
from jaxnets.data.tf_imports import tf, tfds


def make_config(dataset: str, data_dir, **overrides) -> ml_collections.ConfigDict:
    fields = dict(
        dataset=dataset,
        data_dir=None if data_dir is None else str(data_dir),
        image_size=None,
        train_split=None,
        eval_split=None,
        augment=True,
        shuffle_buffer=None,
        cache=None,
        seed=0,
    )
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def _refuse_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the input pipeline tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def no_network(monkeypatch):
    _refuse_network(monkeypatch)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """A data_dir where the bundled digits were prepared, offline, by the pipeline itself."""
    data_dir = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _refuse_network(monkeypatch)
        data.dataset_info(make_config("digits", data_dir))
    return data_dir


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def examples(batches):
    """Multiset of (pixels, label) of the unmasked examples, comparable across runs and processes."""
    counter = collections.Counter()
    for batch in batches:
        mask = batch.get("mask", np.ones(len(batch["label"]), bool))
        for image, label in zip(batch["image"][mask], batch["label"][mask], strict=True):
            counter[(image.tobytes(), int(label))] += 1
    return counter


# --- config validation --------------------------------------------------------------------------------


def test_unknown_dataset_names_the_field_and_the_known_datasets():
    with pytest.raises(ValueError) as error:
        data.check_data_config(make_config("cifar11", "/nonexistent"))
    assert str(error.value) == (
        "config.dataset: unknown dataset 'cifar11'; known: cifar10, cifar100, imagenet2012, timbres, digits, "
        "folder:/path/to/your/images, or audio_folder:/path/to/your/clips"
    )


@pytest.mark.parametrize(
    "field, value",
    [("image_size", 0), ("shuffle_buffer", -1), ("augment", "yes"), ("seed", -1), ("train_split", "")],
)
def test_bad_field_is_named(field, value):
    with pytest.raises(ValueError, match=rf"^config\.{field}: expected .*, got {value!r}$"):
        data.check_data_config(make_config("cifar10", "/nonexistent", **{field: value}))


def test_defaults_per_dataset():
    checked = data.check_data_config(make_config("imagenet2012", "/d"))
    assert (checked.image_size, checked.train_split, checked.eval_split, checked.cache) == (
        224,
        "train",
        "validation",
        False,
    )
    assert data.check_data_config(make_config("digits", "/d", image_size=32)).image_size == 32


def test_table_and_config_check_import_without_tensorflow():
    code = (
        "import sys, jaxnets.data as d; "
        "d.check_data_config({'dataset': 'cifar10', 'augment': True, 'seed': 0}); "
        "assert 'tensorflow' not in sys.modules, 'jaxnets.data imported TensorFlow'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- not prepared: fail fast, say how, never download ---------------------------------------------------


@pytest.mark.parametrize(
    "dataset, hint",
    [
        (
            "cifar10",
            "run `python -m jaxnets.data.prepare cifar10 --data_dir {d}` (or `tfds build cifar10 --data_dir {d}`)",
        ),
        (
            "imagenet2012",
            "in {d}/downloads/manual (or pass --manual_dir DIR), then run `python -m jaxnets.data.prepare",
        ),
    ],
)
def test_unprepared_dataset_fails_fast_with_how_to_prepare(tmp_path, no_network, dataset, hint):
    config = make_config(dataset, tmp_path)
    start = time.perf_counter()
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.train_iterator(config, 8)
    elapsed = time.perf_counter() - start
    message = str(error.value)
    assert elapsed < 10, f"took {elapsed:.1f} s to report an unprepared dataset"
    assert "\n" not in message
    assert message.startswith(f"config.dataset: {dataset!r} is not prepared in {tmp_path}")
    assert hint.format(d=tmp_path) in message
    for call in (data.dataset_info, lambda c: data.eval_iterator(c, 8)):
        with pytest.raises(data.DatasetNotPreparedError):
            call(config)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded, nothing half-written


@pytest.mark.parametrize("layout", ["cifar10/3.0.2/dataset_info.json", "cifar10/plain_text/3.0.2/dataset_info.json"])
def test_a_prepared_looking_folder_is_left_to_tfds_to_judge(tmp_path, layout):
    """The check before TensorFlow refuses only a dataset with no prepared version at all (versions with or
    without a builder config); the rest is TFDS's to read, which here finds no records."""
    (tmp_path / layout).parent.mkdir(parents=True)
    (tmp_path / layout).write_text("{}")
    assert data.available_data(make_config("cifar10", tmp_path)).dataset == "cifar10"
    with pytest.raises(data.DatasetNotPreparedError, match="is not prepared in"):
        data.available_data(make_config("cifar100", tmp_path))


def test_without_a_data_dir_the_check_looks_where_tfds_does(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DatasetNotPreparedError, match=f"is not prepared in {tmp_path}: "):
        data.available_data(make_config("cifar10", None))
    (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)
    (tmp_path / "cifar10" / "3.0.2" / "dataset_info.json").write_text("{}")
    data.available_data(make_config("cifar10", None))


def test_remote_storage_is_left_to_tfds(tmp_path):
    assert data.available_data(make_config("cifar10", "gs://no-such-bucket/tfds")).data_dir == "gs://no-such-bucket/tfds"


def test_prepare_command_prepares_the_bundled_digits(tmp_path, no_network, capsys):
    from jaxnets.data import prepare

    prepare.main(["digits", "--data_dir", str(tmp_path)])
    assert "digits prepared in" in capsys.readouterr().out
    assert data.dataset_info(make_config("digits", tmp_path)).num_train_examples == 1347


# --- the bundled digits, for real -----------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_stats_match():
    raw = digits.load_npz()
    assert raw["images"].shape == (1797, 8, 8) and raw["images"].max() == 16
    test_index = raw["test_index"]
    assert len(test_index) == len(np.unique(test_index)) == 450
    per_class, test_per_class = np.bincount(raw["labels"]), np.bincount(raw["labels"][test_index])
    np.testing.assert_array_less(np.abs(test_per_class - per_class * 450 / 1797), 1.0)
    train = np.setdiff1d(np.arange(1797), test_index)
    pixels = digits.rescale(raw["images"][train]) / 255.0
    np.testing.assert_allclose([pixels.mean(), pixels.std()], [DIGITS_MEAN[0], DIGITS_STD[0]], atol=1e-4)


def test_digits_prepared_offline_and_counts(digits_dir):
    info = data.dataset_info(make_config("digits", digits_dir))
    assert info == data.DatasetInfo(
        num_classes=10, image_shape=(8, 8, 1), num_train_examples=1347, num_eval_examples=450,
        class_names=tuple("0123456789"),
    )
    assert (digits_dir / "jaxnets_digits" / "1.0.0" / "dataset_info.json").exists()
    batches = list(data.eval_iterator(make_config("digits", digits_dir), 100))
    assert len(batches) == 5 and sum(b["mask"].sum() for b in batches) == 450
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    assert np.bincount(labels).tolist() == [45, 46, 44, 46, 45, 46, 45, 45, 43, 45]


def test_digits_batches_shapes_and_ranges(digits_dir):
    batch = next(data.train_iterator(make_config("digits", digits_dir, image_size=16), 32))
    assert batch["image"].shape == (32, 16, 16, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    lo, hi = (0 - DIGITS_MEAN[0]) / DIGITS_STD[0], (1 - DIGITS_MEAN[0]) / DIGITS_STD[0]
    assert lo - 1e-5 <= batch["image"].min() and batch["image"].max() <= hi + 1e-5
    assert set(batch["label"].tolist()) <= set(range(10))


def test_train_epoch_is_a_permutation_and_epochs_differ(digits_dir):
    config = make_config("digits", digits_dir, augment=False)
    train = examples(data.eval_iterator(make_config("digits", digits_dir, eval_split="train"), 449))
    batches = take(data.train_iterator(config, 449), 6)
    first, second = batches[:3], batches[3:]
    assert examples(first) == train and examples(second) == train  # 1347 = 3 x 449: each epoch sees each once
    assert not np.array_equal(first[0]["label"], second[0]["label"])  # reshuffled every epoch


def test_resume_is_exact_across_an_epoch_boundary(digits_dir):
    config = make_config("digits", digits_dir)  # with augmentation
    uninterrupted = take(data.train_iterator(config, 128), 14)  # an epoch is 10.5 steps
    resumed = take(data.train_iterator(config, 128, start_step=9), 5)
    for step, (expected, got) in enumerate(zip(uninterrupted[9:], resumed, strict=True), start=9):
        np.testing.assert_array_equal(got["label"], expected["label"], err_msg=f"step {step}")
        np.testing.assert_array_equal(got["image"], expected["image"], err_msg=f"step {step}")
    other_seed = next(data.train_iterator(make_config("digits", digits_dir, seed=1), 128))
    assert not np.array_equal(other_seed["image"], uninterrupted[0]["image"])


def test_per_process_rows_make_the_single_process_batches(digits_dir):
    """Each process's local batch is its rows of the one global stream, whatever the number of processes:
    across an epoch boundary (1,347 examples, 10.5 global batches of 128) and after a resume."""
    config = make_config("digits", digits_dir)
    single = take(data.train_iterator(config, 128), 12)
    for process_count in (2, 4):
        local = 128 // process_count
        per_process = [take(data.train_iterator(config, local, process_index=i, process_count=process_count), 12)
                       for i in range(process_count)]
        for step in range(12):
            for key in ("image", "label"):
                joined = np.concatenate([batches[step][key] for batches in per_process])
                np.testing.assert_array_equal(joined, single[step][key], err_msg=f"{process_count} processes, {step}")
    resumed = take(data.train_iterator(config, 64, start_step=10, process_index=1, process_count=2), 1)[0]
    np.testing.assert_array_equal(resumed["image"], single[10]["image"][64:])


def test_eval_every_example_once_across_processes(digits_dir):
    config = make_config("digits", digits_dir)
    single = examples(data.eval_iterator(config, 64))
    per_process = [list(data.eval_iterator(config, 64, process_index=i, process_count=3)) for i in range(3)]
    assert [len(batches) for batches in per_process] == [3, 3, 3]  # 150 each, ceil(150 / 64)
    assert sum((examples(batches) for batches in per_process), collections.Counter()) == single
    assert sum(single.values()) == 450
    padded = per_process[0][-1]
    assert padded["mask"].sum() == 150 - 128 and not padded["image"][~padded["mask"]].any()


# --- CIFAR and ImageNet through tfds.testing.mock_data --------------------------------------------------


@pytest.mark.parametrize(
    "dataset, image_size, shape, classes",
    [
        ("cifar10", None, (32, 32, 3), 10),
        ("cifar100", None, (32, 32, 3), 100),
        ("imagenet2012", 64, (64, 64, 3), 1000),
        ("digits", None, (8, 8, 1), 10),  # what the trainer's smoke tests of the quickstart see
    ],
)
def test_mocked_datasets_train_and_eval(tmp_path, dataset, image_size, shape, classes):
    spec = data.DATASETS[dataset]
    lo = min((0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True))
    hi = max((1 - m) / s for m, s in zip(spec.mean, spec.std, strict=True))
    config = make_config(dataset, tmp_path, image_size=image_size)  # an empty data_dir: the mock serves
    with tfds.testing.mock_data(num_examples=20):
        info = data.dataset_info(config)
        train = take(data.train_iterator(config, 8), 3)  # 24 > 20: crosses an epoch
        evaluation = list(data.eval_iterator(config, 8))
    assert (info.num_classes, info.image_shape, info.num_train_examples, info.num_eval_examples) == (
        classes,
        shape,
        20,
        20,
    )
    for batch in train:
        assert batch["image"].shape == (8, *shape) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and 0 <= batch["label"].min() and batch["label"].max() < classes
        assert lo - 1e-3 <= batch["image"].min() and batch["image"].max() <= hi + 1e-3
    assert len(evaluation) == math.ceil(20 / 8)
    assert [b["mask"].sum() for b in evaluation] == [8, 8, 4]
    assert all(b["image"].shape == (8, *shape) and b["mask"].dtype == np.bool_ for b in evaluation)
    assert not evaluation[-1]["image"][4:].any()


@pytest.mark.parametrize("cache", [True, False])
def test_cache_reads_the_split_once(tmp_path, cache):
    calls = []

    def as_dataset(self, split, **kwargs):
        def generate():
            calls.append(split)
            for i in range(20):
                yield {"image": np.full((32, 32, 3), i, np.uint8), "label": i % 10}

        spec = {"image": tf.TensorSpec((32, 32, 3), tf.uint8), "label": tf.TensorSpec((), tf.int64)}
        ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
        return ds.apply(tf.data.experimental.assert_cardinality(20))

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        take(data.train_iterator(make_config("cifar10", tmp_path, cache=cache), 20), 3)  # 3 epochs
    if cache:
        assert len(calls) == 1
    else:  # once per epoch, and prefetching may have started the next one
        assert len(calls) >= 3


def _split_aware_cifar(num_train, num_test):
    """mock_data's default ignores the split; this one serves example i of a split as pixels (i % 256, i // 256)."""

    def as_dataset(self, split, **kwargs):
        sizes = {"train": collections.namedtuple("S", "num_examples")(num_train)}
        sizes["test"] = sizes["train"]._replace(num_examples=num_test)
        instructions = tfds.core.splits.AbstractSplit.from_spec(split).to_absolute(sizes)
        index = np.concatenate([np.arange(sizes[a.splitname].num_examples)[a.from_ : a.to] for a in instructions])
        images = np.zeros((len(index), 32, 32, 3), np.uint8)
        images[:, 0, 0, 0], images[:, 0, 0, 1] = index % 256, index // 256
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": index % 10, "id": index.astype(str)})

    return as_dataset


def _indices(batches):
    mean, std = np.array(data.DATASETS["cifar10"].mean), np.array(data.DATASETS["cifar10"].std)
    out = []
    for batch in batches:
        pixels = np.round((batch["image"][:, 0, 0, :] * std + mean) * 255).astype(int)
        keep = batch["mask"] if "mask" in batch else np.ones(len(pixels), bool)
        out.extend((pixels[keep, 0] + 256 * pixels[keep, 1]).tolist())
    return out


def test_mocked_per_process_eval_split_and_train_rows(tmp_path):
    config = make_config("cifar10", tmp_path, augment=False)
    with tfds.testing.mock_data(as_dataset_fn=_split_aware_cifar(num_train=301, num_test=50)):
        evals = [list(data.eval_iterator(config, 8, process_index=i, process_count=3)) for i in range(3)]
        trains = [take(data.train_iterator(config, 50, process_index=i, process_count=3), 2) for i in range(3)]
        single = take(data.train_iterator(config, 150), 2)
    assert [len(batches) for batches in evals] == [3, 3, 3]  # 17, 17, 16 examples: ceil(17 / 8)
    assert sorted(sum((_indices(batches) for batches in evals), [])) == list(range(50))
    for step in range(2):  # the processes' rows, in process order, are the single process's global batch
        assert sum((_indices([batches[step]]) for batches in trains), []) == _indices([single[step]])
    assert len(set(_indices(single))) == 300, "two global batches of distinct examples"


# --- preprocessing semantics ----------------------------------------------------------------------------


def test_cifar_train_augmentation_is_a_padded_shift_and_maybe_a_flip():
    from jaxnets.data import preprocess

    spec = data.DATASETS["cifar10"]
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    padded = np.pad(image, [(4, 4), (4, 4), (0, 0)]).astype(np.float32) / 255
    candidates = {  # every crop of the zero-padded image, flipped or not
        (y, x, flip): (crop[:, ::-1] if flip else crop)
        for y in range(9) for x in range(9) for flip in (False, True)
        for crop in [(padded[y : y + 32, x : x + 32] - spec.mean) / spec.std]
    }
    uniforms = np.random.default_rng(1).random((200, 3), dtype=np.float32)
    uniforms[:3] = [[0, 0, 0], [0.9999999, 0.9999999, 0.9999999], [0.5, 0.5, 0.5]]  # the extremes
    batch = np.repeat(image[None], len(uniforms), axis=0)
    augmentation = Augmentation(flip=True, crop="shift", scale=(0.08, 1.0), color_jitter=0.0)  # CIFAR's default
    out = preprocess.cifar(tf.constant(batch), spec, 32, augmentation, tf.constant(uniforms)).numpy()
    seen = []
    for i, augmented in enumerate(out):
        matches = [key for key, candidate in candidates.items() if np.allclose(augmented, candidate, atol=1e-5)]
        assert matches, f"augmented image {i} is not a shifted (and possibly flipped) copy"
        seen.extend(matches)
    assert {(0, 0, True), (8, 8, False), (4, 4, False)} <= set(seen[:3])  # offsets 0..8; a flip below 0.5
    assert len(set(seen)) > 100  # and the shifts and flips vary


def test_imagenet_eval_resizes_the_shorter_side_then_crops_the_centre():
    from jaxnets.data import preprocess

    spec = data.DATASETS["imagenet2012"]
    yy, xx = np.mgrid[0:300, 0:400]
    jpeg = tf.io.encode_jpeg(np.stack([yy % 256, xx % 256, (yy + xx) % 256], -1).astype(np.uint8), quality=100)
    with Image.open(io.BytesIO(jpeg.numpy())) as image:  # decoded as PIL (torchvision, timm) decodes it
        decoded = tf.constant(np.asarray(image.convert("RGB")))
    expected = tf.image.resize(decoded, [256, 341], antialias=True).numpy()[16:240, 58:282]  # 224 / 0.875 = 256
    expected = (expected / 255 - np.array(spec.mean)) / np.array(spec.std)
    got = preprocess.imagenet_eval(jpeg, spec, 224).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The pipeline's two stages (per example, then per batch) give the same.
    staged = preprocess.imagenet(preprocess.imagenet_decode(jpeg, spec, 224, None, None)[None], spec, 224, None, None)
    np.testing.assert_allclose(staged.numpy()[0], expected, atol=1e-5)
    # The JPEG fast path (decode only the random crop) gives what decoding first gives.
    seed = tf.constant([3, 4], tf.int64)
    augmentation = Augmentation(flip=True, crop="random_resized", scale=(0.08, 1.0), color_jitter=0.0)
    np.testing.assert_array_equal(
        preprocess.imagenet_decode(jpeg, spec, 224, augmentation, seed).numpy(),
        preprocess.imagenet_decode(decoded, spec, 224, augmentation, seed).numpy(),
    )


# --- augmentation, piece by piece (config.augmentation) ---------------------------------------------------


def test_each_dataset_kind_has_its_own_augmentation_and_a_field_replaces_it():
    def chosen(dataset, **section):
        augmentation = data.check_data_config(make_config(dataset, "/d", augmentation=section)).augmentation
        return augmentation.flip, augmentation.crop

    assert chosen("cifar10") == (True, "shift") and chosen("imagenet2012") == (True, "random_resized")
    assert chosen("digits") == (False, "shift"), "a mirrored digit is another digit"
    assert chosen("folder:/photos") == (True, "shift")
    assert chosen("digits", flip=True, crop="none") == (True, "none")
    assert data.check_data_config(make_config("cifar10", "/d", augment=False)).augmentation is None


@pytest.mark.parametrize("field, value, message", [
    ("flip", "yes", r"config.augmentation.flip: expected True, False or None, got 'yes'"),
    ("crop", "rotate", r"config.augmentation.crop: expected one of shift, random_resized, none or None, got 'rotate'"),
    ("scale", (0.5, 0.2), r"config.augmentation.scale: expected \(low, high\) with 0 < low <= high <= 1, "
                          r"got \(0.5, 0.2\)"),
    ("color_jitter", 1.5, r"config.augmentation.color_jitter: expected a number in \[0, 1\), got 1.5"),
    ("rotate", 10, r"config.augmentation: unknown field\(s\) rotate; the fields are flip, crop, scale, color_jitter"),
])
def test_each_bad_augmentation_field_is_one_line(field, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        data.check_data_config(make_config("cifar10", "/d", augmentation={field: value}))


def test_a_random_resized_crop_takes_its_share_of_the_image_where_drawn():
    """Area 1/4, aspect ratio 1 (the middle of the log-uniform range), top left: the top-left quarter of an image
    whose top-left quarter is white, resized to the whole output; area 1: the whole image."""
    from jaxnets.data import preprocess

    spec = data.DATASETS["cifar10"]
    image = np.zeros((32, 32, 3), np.uint8)
    image[:16, :16] = 255
    quarter = Augmentation(flip=False, crop="random_resized", scale=(0.25, 0.25), color_jitter=0.0)
    whole = dataclasses.replace(quarter, scale=(1.0, 1.0))
    uniforms = tf.constant([[0.0, 0.5, 0.0, 0.0]], tf.float32)  # area, aspect ratio, top, left
    pixels = lambda out: out.numpy()[0] * spec.std + spec.mean  # noqa: E731  (back to [0, 1])
    np.testing.assert_allclose(pixels(preprocess.cifar(tf.constant(image[None]), spec, 32, quarter, uniforms)),
                               1.0, atol=1e-5)
    np.testing.assert_allclose(pixels(preprocess.cifar(tf.constant(image[None]), spec, 32, whole, uniforms)),
                               image / 255.0, atol=1e-5)


def test_color_jitter_scales_brightness_contrast_and_saturation_by_the_drawn_factors():
    from jaxnets.data import preprocess

    spec = data.DATASETS["cifar10"]
    image = np.random.default_rng(0).integers(0, 160, (1, 32, 32, 3), dtype=np.uint8)
    jitter = Augmentation(flip=False, crop="none", scale=(0.08, 1.0), color_jitter=0.5)
    # brightness factor 1.5 (the top of [0.5, 1.5]), contrast and saturation 1 (the middle): brighter only
    out = preprocess.cifar(tf.constant(image), spec, 32, jitter, tf.constant([[1.0, 0.5, 0.5]], tf.float32))
    np.testing.assert_allclose(out.numpy() * spec.std + spec.mean, np.minimum(image * 1.5, 255) / 255, atol=1e-5)
    # saturation 0.5 (the bottom): halfway to each pixel's grey
    out = preprocess.cifar(tf.constant(image), spec, 32, jitter, tf.constant([[0.5, 0.5, 0.0]], tf.float32))
    grey = tf.image.rgb_to_grayscale(tf.constant(image, tf.float32)).numpy()
    np.testing.assert_allclose(out.numpy() * spec.std + spec.mean, (grey + (image - grey) * 0.5) / 255, atol=1e-5)


def test_the_input_pipeline_imports_tensorflow_without_keras_and_tf_keras_still_works():
    """TensorFlow's eager import of Keras (1.4-3.0 s of train.py's imports here) is skipped for the pipeline, and
    nothing of it stays behind: TensorFlow's module paths are whole (no None: `help(tf)` walks them), the mark that
    stopped the import is gone, and `tf.keras` gives Keras 3 to code that uses it."""
    code = ("import sys; import jaxnets.data.pipeline; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, 'keras.src.optimizers' in sys.modules); "
            "print(sorted(m for m, module in list(sys.modules.items()) "
            "             if m.startswith('tensorflow') and None in (getattr(module, '__path__', None) or []))); "
            "import tensorflow as tf; print(type(tf.keras.layers.Dense(3)).__module__.split('.')[0])")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}  # (TensorFlow would skip Keras)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:3] == ["True False False", "[]", "keras"], result.stdout

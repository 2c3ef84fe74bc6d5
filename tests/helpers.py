"""Configs and synthetic data shared by the trainer tests (test modules import this, never each other)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import pathlib
import shutil
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from filelock import FileLock
from PIL import Image

from jaxnets.config import base_config
from jaxnets.data import DatasetInfo

REPO = pathlib.Path(__file__).parents[1]
# How the suite compiles (conftest.py says why), for the processes the tests start themselves too.
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                "--xla_cpu_parallel_codegen_split_count=1")


def cpu_xla_flags(count: int) -> str:
    """XLA_FLAGS for `count` CPU devices compiled like the suite (FAST_COMPILE)."""
    return f"--xla_force_host_platform_device_count={count} {FAST_COMPILE}"


def cpu_devices_env(count: int) -> dict[str, str]:
    """os.environ for a process the tests start, with `count` CPU devices compiled like the suite."""
    return {**os.environ, "XLA_FLAGS": cpu_xla_flags(count)}


GLOBAL_BATCH = 16
# What build_trainer would read from a dataset's metadata, for runs on `random_batches`.
SYNTHETIC_DATASET = DatasetInfo(num_classes=10, image_shape=(8, 8, 3), num_train_examples=100 * GLOBAL_BATCH,
                                num_eval_examples=GLOBAL_BATCH)


@contextlib.contextmanager
def compiles_nothing():
    """Fails the block if JAX compiles anything in it: "refused before compiling", read from JAX's own compile log
    (a stopwatch would depend on the machine)."""
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield
    finally:
        logger.removeHandler(handler)
    compiled = [line for line in log.getvalue().splitlines() if line.startswith("Compiling ")]
    assert not compiled, f"compiled before refusing: {compiled[0]}"


def load_recipe(name: str, **fields) -> ml_collections.ConfigDict:
    """configs/<name>.py's get_config(), loaded as train.py loads it, with top-level `fields` set as train.py's
    `--config.<field>=<value>` would."""
    path = REPO / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in fields.items():
        config[key] = value
    return config


def recording_train_iterator(read, record):
    """`read` (jaxnets.data.train_iterator) that calls record(step, digests) for each batch it yields: one digest of
    each example's image and label bytes, in the order of the batch. (What a process reads, comparable across runs
    and processes.)"""

    def train_iterator(config, local_batch_size, *, start_step=0, **kwargs):
        for step, batch in enumerate(read(config, local_batch_size, start_step=start_step, **kwargs), start_step + 1):
            examples = zip(np.asarray(batch["image"]), np.asarray(batch["label"]), strict=True)
            record(step, [hashlib.sha256(image.tobytes() + label.tobytes()).hexdigest()[:16]
                          for image, label in examples])
            yield batch

    return train_iterator


def variables_digest(variables) -> str:
    """sha256 over every array of a tree with its path, shape and dtype: equal trees, equal digests (one process's
    parameters against another's)."""
    sha = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        leaf = np.asarray(leaf)
        sha.update(f"{jax.tree_util.keystr(path)} {leaf.shape} {leaf.dtype}".encode() + leaf.tobytes())
    return sha.hexdigest()


def optim_config(**fields) -> ml_collections.ConfigDict:
    """Every field at its default but a constant lr of 0.1 over 200 epochs, no weight decay and torch's RMSProp
    epsilon, then `fields`; untyped, so a test can set a value of the wrong type to check its message."""
    defaults = {**base_config().to_dict(), "learning_rate": 0.1, "num_epochs": 200, "schedule": "constant",
                "weight_decay": 0.0, "rmsprop_epsilon": 1e-8}
    return ml_collections.ConfigDict({**defaults, **fields})


def tiny_resnext_config(sync_batch_norm: bool = True, conv_lowering: str = "auto") -> ml_collections.ConfigDict:
    c = base_config()
    c.model = "cifar_resnext50"  # grouped 1x1 and 3x3 convs: the ones XLA's partitioner all-gathers
    c.conv_lowering = conv_lowering
    c.model_overrides.stage_sizes = (1, 1)
    c.model_overrides.stage_planes = (16, 32)
    c.model_overrides.groups = 4
    c.image_size = 8
    c.global_batch_size = c.eval_batch_size = GLOBAL_BATCH
    c.sync_batch_norm = sync_batch_norm
    c.learning_rate = 0.05
    c.schedule = "constant"
    c.num_epochs = 1
    return c


def random_batches(num: int):
    """`num` global batches of GLOBAL_BATCH random 8x8x3 images and labels, the same on every call."""
    rng = np.random.default_rng(0)
    for _ in range(num):
        yield {"image": rng.standard_normal((GLOBAL_BATCH, 8, 8, 3), dtype=np.float32),
               "label": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)}


def grating_folder(root, degrees: list[int], train_per_class: int, test_per_class: int, seed: int):
    """12x12 grey gratings, one orientation a class (random frequency and phase, noise 1.5x their amplitude)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:12, 0:12]
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for angle in degrees:
            folder = root / split / f"{angle:03d}deg"
            folder.mkdir(parents=True)
            for i in range(count):
                theta, frequency, phase = np.deg2rad(angle), rng.uniform(0.15, 0.3), rng.uniform(0, 2 * np.pi)
                wave = np.sin(2 * np.pi * frequency * (x * np.cos(theta) + y * np.sin(theta)) + phase)
                pixels = 127.5 + 60 * (wave + rng.normal(0, 1.5, wave.shape))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def built_once(tmp_path_factory, worker_id: str, name: str, build: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """The directory <session's temp>/name, made by `build(directory)` once for the whole session, however many
    pytest-xdist workers ask for it (xdist's recipe for a once-only fixture: the first to take the lock builds it,
    the others wait and find it done). For work a module fixture would repeat on each worker that runs one of the
    module's tests (with --dist worksteal, often two or three). The tests share it: they may add files to it (a
    report's pictures), never change what is there."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # this session's directory, shared by its workers
    directory, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)  # what a failed build left (its worker reported it)
            directory.mkdir()
            build(directory)
            done.touch()
    return directory

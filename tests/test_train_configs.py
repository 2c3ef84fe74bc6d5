"""Every recipe in configs/ runs its real code path for 2 steps, with a tiny model, on mock data, on one device.

(One device: what differs between recipes is their model, data, optimizer and task, not how a step is spread over
devices, which test_train_parallel, test_checkpoint, test_dispatch and test_multihost run on 2 to 8; 8 forced CPU
devices made this module 147 s of CPU instead of 103.)"""

import json
import math
import pathlib

import jax
import numpy as np
import pytest
import soundfile
from helpers import load_recipe
from PIL import Image

from jaxnets.data import DATASETS, dataset_spec
from jaxnets.data.tf_imports import tfds
from jaxnets.models import create_model
from jaxnets.train import train_and_evaluate

# (The quickstart search runs whole, short, in test_nas_search.py; the audio quickstart trains through train.py in
# test_sound.py.)
CONFIGS = sorted(p for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.stem not in ("enas_search_quickstart", "audio_quickstart"))

# Same model code, tiny depth and width (depth and width are data in every family).
TINY_MODEL = {
    "resnext": {"stage_sizes": None, "stage_planes": None},  # filled from the model's stage count
    "resnet": {"stage_sizes": None, "stage_planes": None},  # (likewise)
    "mobilenet": {"width_multiplier": 0.25},  # and one block per stage
    "enas": {"num_layers": 3, "num_filters": 8, "arc": "0  1 0  3 1 1"},
}
# A search: one epoch of 3 steps, then one controller update of 2 arcs, and the final pick of 2 arcs.
TINY_SEARCH = {"controller_updates_per_epoch": 1, "controller_arcs_per_update": 2, "controller_batch_size": 8,
               "eval_arcs": 2, "final_arcs": 2}


def tiny_image_folder(root: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b", "c"):
            (root / split / name).mkdir(parents=True)
            for i in range(8):  # (24 images, as mock_data gives the other recipes)
                image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / split / name / f"{i}.png")
    return root


def tiny_audio_folder(root: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b", "c"):
            (root / split / name).mkdir(parents=True)
            for i in range(8):
                soundfile.write(root / split / name / f"{i}.wav", 0.1 * rng.standard_normal(4000), 8000)
    return root


def shrink(config, workdir):
    family = next(f for f in TINY_MODEL if f in config.model)
    overrides = dict(TINY_MODEL[family])
    if family in ("resnext", "resnet"):
        num_stages = len(config.model_overrides.get("stage_sizes") or ()) or (3 if "29" in config.model else 4)
        overrides = {"stage_sizes": (1,) * num_stages, "stage_planes": (16,) * num_stages}
    if family == "mobilenet":  # every stage, one block each (compiling 17 blocks is most of the test)
        stages = create_model(config.model, **config.model_overrides.to_dict()).stages
        overrides["stages"] = tuple((expand, channels, 1, stride) for expand, channels, _, stride in stages)
    if config.task == "search":
        overrides.pop("arc")  # the search samples its arcs
        overrides["num_branches"] = 2  # (every op is a branch of the one compiled step: fewer compile faster)
    with config.unlocked():
        for key, value in overrides.items():
            config.model_overrides[key] = value
    config.num_train_steps = 2
    config.global_batch_size = 8
    config.eval_batch_size = 8
    if config.dataset.startswith("folder:"):  # a recipe for your own images: 3 classes of 8 random 16x16 images
        config.dataset = f"folder:{tiny_image_folder(workdir / 'images')}"
        config.image_size = 16
    if dataset_spec(config.dataset).family == "audio":  # sound: 3 classes of 8 clips of noise, 40 x 21 inputs
        config.dataset = f"audio_folder:{tiny_audio_folder(workdir / 'clips')}"
        config.audio.clip_seconds, config.audio.freq_mask_width, config.audio.time_mask_width = 0.32, 4, 4
    else:
        config.image_size = min(config.image_size or DATASETS[config.dataset].image_size, 32)
    config.shuffle_buffer = 16
    config.log_every_steps = 1
    config.data_dir = str(workdir / "tfds")
    if config.task == "search":
        config.num_train_steps = 3
        for key, value in TINY_SEARCH.items():
            config.search[key] = value
    return config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_trains_two_steps(path, tmp_path):
    config = shrink(load_recipe(path.stem), tmp_path)
    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=24):
        final = train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])

    steps = config.num_train_steps
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    assert all(math.isfinite(r["train_loss"]) and r["train_learning_rate"] >= 0 for r in train)
    metric = "eval_top1" if config.task == "classification" else "eval_mean_accuracy"
    evals = [r for r in records if metric in r]
    assert [r["step"] for r in evals] == [steps] and 0.0 <= evals[0][metric] <= 1.0
    assert final["eval_examples"] == evals[0]["eval_examples"] > 0
    assert list(workdir.glob("events.out.tfevents.*")), "TensorBoard events"
    if config.task == "search":  # its controller learned after the epoch, and it wrote its arc and recipe
        search = [json.loads(line) for line in (workdir / "search.jsonl").read_text().splitlines()]
        assert [r.get("controller_updates") for r in search] == [1, None]  # epoch 1, then the final pick
        assert (workdir / "final_arc.txt").exists() and (workdir / "final_config.py").exists()


def test_every_recipe_documents_its_command():
    for path in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py"):
        text = path.read_text()
        assert f"python train.py --config configs/{path.name}" in text, f"{path.name}: docstring needs the command"

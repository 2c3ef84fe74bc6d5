"""Every recipe in configs/ runs its real code path for 2 steps, with a tiny model, on mock data."""

import json
import math
import pathlib

import pytest
import tensorflow_datasets as tfds
from helpers import load_recipe

from jaxnets.data import DATASETS
from jaxnets.models import create_model
from jaxnets.train import train_and_evaluate

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "configs").glob("*.py"))

# Same model code, tiny depth and width (depth and width are data in every family).
TINY_MODEL = {
    "resnext": {"stage_sizes": None, "stage_planes": None},  # filled from the model's stage count
    "mobilenet": {"width_multiplier": 0.25},  # and one block per stage
    "enas": {"num_layers": 3, "num_filters": 8, "arc": "0  1 0  3 1 1"},
}


def shrink(config, workdir):
    family = next(f for f in TINY_MODEL if f in config.model)
    overrides = dict(TINY_MODEL[family])
    if family == "resnext":
        num_stages = len(config.model_overrides.get("stage_sizes") or ()) or (3 if "29" in config.model else 4)
        overrides = {"stage_sizes": (1,) * num_stages, "stage_planes": (16,) * num_stages}
    if family == "mobilenet":  # every stage, one block each (compiling 17 blocks is most of the test)
        stages = create_model(config.model, **config.model_overrides.to_dict()).stages
        overrides["stages"] = tuple((expand, channels, 1, stride) for expand, channels, _, stride in stages)
    with config.unlocked():
        for key, value in overrides.items():
            config.model_overrides[key] = value
    config.num_train_steps = 2
    config.global_batch_size = 8
    config.eval_batch_size = 8
    config.image_size = min(config.image_size or DATASETS[config.dataset].image_size, 32)
    config.shuffle_buffer = 16
    config.log_every_steps = 1
    config.data_dir = str(workdir / "tfds")
    return config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_trains_two_steps(path, tmp_path):
    config = shrink(load_recipe(path.stem), tmp_path)
    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=24):
        final = train_and_evaluate(config, str(workdir))

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) and r["train_learning_rate"] >= 0 for r in train)
    evals = [r for r in records if "eval_top1" in r]
    assert [r["step"] for r in evals] == [2] and 0.0 <= evals[0]["eval_top1"] <= 1.0
    assert final["eval_examples"] == evals[0]["eval_examples"] > 0
    assert list(workdir.glob("events.out.tfevents.*")), "TensorBoard events"


def test_every_recipe_documents_its_command():
    for path in CONFIGS:
        text = path.read_text()
        assert f"python train.py --config configs/{path.name}" in text, f"{path.name}: docstring needs the command"

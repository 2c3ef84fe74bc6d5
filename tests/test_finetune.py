"""Fine-tuning controls (`config.classification`, jaxnets/tasks/finetune.py) through the trainer's own step: a
frozen part keeps its parameters, BN statistics and EMA bit for bit; the backbone's learning-rate multiplier scales
its updates and nothing else; frozen BN statistics normalise the batch in training; each bad value gets one line.
And what it is for: a network pretrained on some classes, fine-tuned on others from few images, beats scratch."""

import jax
import numpy as np
import pytest
from flax import traverse_util
from helpers import SYNTHETIC_DATASET, grating_folder, load_recipe, random_batches, tiny_resnext_config

from jaxnets.errors import ConfigError
from jaxnets.tasks.supervised import cross_entropy
from jaxnets.train import build_trainer, train_and_evaluate
from jaxnets.train.reporting import last_evaluation


def run(config, steps: int, devices: int = 1):
    """(state before, state after, the last step's metrics, trainer) of `steps` steps on `devices` devices."""
    trainer = build_trainer(config, devices=jax.devices()[:devices], dataset_info=SYNTHETIC_DATASET)
    state = trainer.init_state()
    before = jax.device_get(state)
    for batch in random_batches(steps):
        state, metrics = trainer.train_step(state, trainer.shard(batch))
    return before, jax.device_get(state), metrics, trainer


def flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def config_with(**section):
    config = tiny_resnext_config()
    config.weight_decay, config.weight_decay_mode = 5e-4, "coupled"  # (it would move a frozen parameter)
    config.ema_decay = 0.9
    config.classification.update(section)
    return config


@pytest.mark.parametrize("devices, sync_batch_norm", [(1, True), (2, False)])
def test_a_linear_probe_trains_only_the_classifier(devices, sync_batch_norm):
    """frozen="backbone", 3 steps: every parameter, BN statistic and EMA entry outside fc keeps its bits (on 2
    devices with per-device statistics too, whose mean over devices could round), and fc trains."""
    config = config_with(frozen="backbone")
    config.sync_batch_norm = sync_batch_norm
    before, after, _, _ = run(config, steps=3, devices=devices)
    params, trained = flat(before.params), flat(after.params)
    for path in params:
        if path.startswith("fc/"):
            assert not np.array_equal(trained[path], params[path]), path
        else:
            np.testing.assert_array_equal(trained[path], params[path], err_msg=path)
            np.testing.assert_array_equal(flat(after.ema_params)[path], params[path], err_msg=f"EMA of {path}")
    for path, value in flat(before.batch_stats).items():
        np.testing.assert_array_equal(flat(after.batch_stats)[path], value, err_msg=path)


def test_a_frozen_part_by_module_path_keeps_its_bn_statistics_and_the_rest_trains():
    before, after, _, _ = run(config_with(frozen=r"^(conv1|bn1|layer1_)"), steps=2)
    for tree in ("params", "batch_stats"):
        old, new = flat(getattr(before, tree)), flat(getattr(after, tree))
        for path in old:
            frozen = path.split("/")[0] in ("conv1", "bn1") or path.startswith("layer1_")
            assert np.array_equal(new[path], old[path]) == frozen, (tree, path)
    assert any(p.startswith("layer1_") for p in flat(before.params)) and "conv1/kernel" in flat(before.params)


def test_the_backbone_multiplier_scales_the_backbones_updates_and_nothing_else():
    """One SGD step from the same state and batch at multiplier 0.1 and 1: every update outside fc is 0.1 times
    (PyTorch's param group at lr x 0.1), fc's and every BN statistic are the same."""
    updates, stats = {}, {}
    for multiplier in (0.1, 1.0):
        before, after, _, _ = run(config_with(backbone_lr_multiplier=multiplier), steps=1)
        old, new = flat(before.params), flat(after.params)
        updates[multiplier] = {p: new[p].astype(np.float64) - old[p] for p in old}
        stats[multiplier] = flat(after.batch_stats)
    for path, full in updates[1.0].items():
        expected = full if path.startswith("fc/") else 0.1 * full
        # (the difference of float32 parameters carries their rounding: 1 ulp of the parameter)
        np.testing.assert_allclose(updates[0.1][path], expected, rtol=1e-5,
                                   atol=2 * np.finfo(np.float32).eps * np.abs(old[path]).max(), err_msg=path)
        assert np.abs(full).max() > 0, path
    jax.tree.map(np.testing.assert_array_equal, stats[0.1], stats[1.0])


def test_frozen_bn_statistics_normalise_the_batch_in_training_and_stay():
    """freeze_bn_statistics: the training step's loss is the eval-mode loss of the same parameters (BN uses the
    running statistics), the statistics keep their bits, and the parameters train."""
    config = config_with(freeze_bn_statistics=True)
    config.ema_decay = None
    before, after, metrics, trainer = run(config, steps=1)
    batch = next(random_batches(1))
    logits = trainer.task.model.apply({"params": before.params, "batch_stats": before.batch_stats}, batch["image"],
                                      train=False)
    np.testing.assert_allclose(float(metrics["loss"]), float(cross_entropy(logits, batch["label"]).mean()),
                               rtol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, after.batch_stats, before.batch_stats)
    assert not np.array_equal(after.params["conv1"]["kernel"], before.params["conv1"]["kernel"])


@pytest.mark.parametrize("field, value, message", [
    ("frozen", "layer(1", r"config.classification.frozen: 'layer\(1' is not a regular expression \(missing \)"),
    ("frozen", 3, r"config.classification.frozen must be a regular expression or 'backbone', got 3"),
    ("backbone_lr_multiplier", -0.1, r"config.classification.backbone_lr_multiplier must be a number > 0, got -0.1"),
    ("backbone_lr_multiplier", 0.0, r"config.classification.backbone_lr_multiplier must be a number > 0, got 0.0 "
                                    r"\(to train the classifier alone: config.classification.frozen='backbone'\)"),
    ("backbone_lr_multiplier", float("inf"), r"config.classification.backbone_lr_multiplier must be a number > 0, "
                                             r"got inf"),
    ("frozen", "layer9", r"config.classification.frozen='layer9' matches no module; the model's modules are named "
                         r"like bn1, conv1, fc, ..., layer2_0/downsample_conv"),
    ("frozen", ".", r"config.classification.frozen='.' matches every module: nothing would train"),
    ("freeze_bn_statistics", "yes", r"config.classification.freeze_bn_statistics must be True or False, got 'yes'"),
])
def test_each_bad_fine_tuning_field_is_refused_in_one_line(field, value, message):
    config = tiny_resnext_config()
    with config.classification.unlocked(), config.classification.ignore_type():
        config.classification[field] = value
    with pytest.raises(ConfigError, match=f"^{message}"):
        build_trainer(config, devices=jax.devices()[:1], dataset_info=SYNTHETIC_DATASET)


def test_fine_tuning_from_other_classes_beats_training_from_scratch(tmp_path):
    """Pretrained on 6 orientations of noisy gratings (100 images each), the quickstart's network fine-tuned with
    init_from on 3 other orientations from 2 images each scores far above the same training from scratch on them
    (measured 93% against 55%; on other draws of the few images 96-97% against 60-72%)."""
    devices = jax.devices()[:1]
    pretraining = grating_folder(tmp_path / "six", [0, 30, 60, 90, 120, 150], 100, 20, seed=0)
    run = {"steps_per_dispatch": 1, "warmup_epochs": 0.0, "eval_every_epochs": 1000.0}
    config = load_recipe("quickstart", dataset=f"folder:{pretraining}", num_train_steps=200, **run)
    config.augmentation.flip = False  # (a mirrored grating is another orientation)
    train_and_evaluate(config, str(tmp_path / "pretrained"), devices=devices)
    assert last_evaluation(tmp_path / "pretrained")["eval_top1"] >= 0.85  # (measured 94%; chance 17%)
    few = grating_folder(tmp_path / "three", [15, 75, 135], 2, 100, seed=1)
    accuracy = {}
    for start, init_from in (("scratch", None), ("fine_tuned", str(tmp_path / "pretrained"))):
        config = load_recipe("quickstart", dataset=f"folder:{few}", num_train_steps=40, global_batch_size=6,
                             eval_batch_size=100, learning_rate=0.05, init_from=init_from, **run)
        config.augmentation.flip = False
        train_and_evaluate(config, str(tmp_path / start), devices=devices)
        evaluation = last_evaluation(tmp_path / start)
        assert evaluation["eval_examples"] == 300
        accuracy[start] = evaluation["eval_top1"]
    assert accuracy["fine_tuned"] >= 0.85 and accuracy["fine_tuned"] >= accuracy["scratch"] + 0.15, accuracy

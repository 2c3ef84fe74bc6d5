"""The resolved config: command-line overrides first, then dataset defaults and derived values."""

import jax
import pytest
from absl import flags
from helpers import REPO, load_recipe
from ml_collections import config_flags

from jaxnets.data import DatasetInfo
from jaxnets.train import build_trainer, resolve_config

IMAGENET = DatasetInfo(num_classes=1000, image_shape=(224, 224, 3), num_train_examples=1_281_167,
                       num_eval_examples=50_000)


def from_command_line(recipe: str, *overrides: str):
    """The config train.py gets for `--config configs/<recipe>.py <overrides>` (absl + ml_collections)."""
    argv = ["train.py", "--config", str(REPO / "configs" / f"{recipe}.py"), *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "recipe", flag_values=flag_values, lock_config=True,
                                    sys_argv=argv)  # the overrides are flags defined from the argv
    flag_values(argv)
    return flag_values.config


def test_learning_rate_scales_with_the_batch_given_on_the_command_line():
    config = from_command_line("resnext50", "--config.global_batch_size=512")
    resolved = resolve_config(config, device_count=8)
    assert resolved.learning_rate == pytest.approx(0.2)
    assert resolve_config(from_command_line("resnext50"), device_count=8).learning_rate == pytest.approx(0.1)
    assert config.learning_rate == 0.1, "the config given is not changed"
    for batch in (512, 40):  # 0.1 * 40 / 256 * 40 / 40 is not 0.1 * 40 / 256 in floating point
        resolved = resolve_config(from_command_line("resnext50", f"--config.global_batch_size={batch}"), device_count=8)
        again = resolve_config(resolved, device_count=8)
        assert again.learning_rate == resolved.learning_rate, "resolving a resolved config changes nothing"


def test_a_dataset_given_on_the_command_line_brings_its_image_size_unless_one_is_given():
    cifar = resolve_config(from_command_line("resnext29_cifar10"), device_count=4)
    assert (cifar.image_size, cifar.shuffle_buffer, cifar.cache) == (32, 50_000, True)
    imagenet = resolve_config(from_command_line("resnext29_cifar10", "--config.dataset=imagenet2012"), device_count=4)
    assert (imagenet.image_size, imagenet.shuffle_buffer, imagenet.cache) == (224, 16_384, False)
    assert (imagenet.train_split, imagenet.eval_split) == ("train", "validation")
    sized = from_command_line("resnext29_cifar10", "--config.dataset=imagenet2012", "--config.image_size=160")
    assert resolve_config(sized, device_count=4).image_size == 160


def test_per_epoch_decay_follows_the_batch_size():
    """MobileNetV2's x0.98 per epoch: an epoch is however many steps the batch size makes it."""
    config = from_command_line("mobilenet_v2", "--config.global_batch_size=1024")
    trainer = build_trainer(config, devices=jax.devices()[:1], dataset_info=IMAGENET)
    steps_per_epoch = 1_281_167 // 1024
    assert trainer.length.steps_per_epoch == steps_per_epoch
    assert trainer.length.total_steps == 300 * steps_per_epoch
    lr = 0.045 * 1024 / 256
    assert float(trainer.task.schedule(steps_per_epoch - 1)) == pytest.approx(lr, rel=1e-6)
    assert float(trainer.task.schedule(steps_per_epoch)) == pytest.approx(lr * 0.98, rel=1e-6)


def test_every_recipe_resolves_and_leaves_dataset_defaults_to_the_dataset():
    for path in sorted((REPO / "configs").glob("*.py")):
        config = load_recipe(path.stem)
        if config.dataset.startswith("folder:"):  # your own photos, of any size: the recipe resizes them
            assert config.image_size == 224, path.name
        else:
            assert config.image_size is None, f"{path.name}: the dataset gives the image size"
        resolve_config(config, device_count=1)

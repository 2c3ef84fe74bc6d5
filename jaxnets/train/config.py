"""The fields every run reads, with their one default, and `resolve_config`: the config a run actually uses.

Recipes in configs/ start from `jaxnets.config.base_config(task)`: these fields, `task`, and the task's own
section (`config.<task>`, its defaults the task's). Fields are flat, so any of them overrides from the
command line (`--config.learning_rate=0.05`); the model's own fields go in `model_overrides`
(`--config.model_overrides.width_multiplier=0.5`). Nothing else in jaxnets holds a default for these fields.

`resolve_config` runs after the command line: the task derives its values (its `prepare`), then it fills
the dataset's own defaults where a field is None
(image size, splits, shuffle buffer, cache; the table is `jaxnets.data.DATASETS`), derives the values
that depend on other fields (the learning rate scaled to the batch), and validates everything, so a
derived value can never be stale. Steps per epoch and schedule boundaries depend on the dataset's size and
are derived when the trainer is built (`jaxnets.train.build_trainer`), from the resolved fields.
"""

from __future__ import annotations

import jax
import ml_collections
from ml_collections.config_dict import placeholder

from jaxnets.data import check_data_config
from jaxnets.errors import ConfigError
from jaxnets.sound.config import NULLABLE as SOUND_NULLABLE
from jaxnets.sound.config import config_section as sound_config_section
from jaxnets.train.task import get_task
from jaxnets.train.validate import check_config
from jaxnets.values import is_int, is_real


def engine_config() -> ml_collections.ConfigDict:
    """The fields of every run, whatever its task; `jaxnets.config.base_config(task)` adds the task's."""
    c = ml_collections.ConfigDict()
    c.task = placeholder(str)  # what is trained: a registered task (jaxnets.train.task); the loop is the same for all
    # Model: a registry name plus any of its fields.
    c.model = "resnext29_8x64d"
    c.model_overrides = ml_collections.ConfigDict()
    c.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (parameters and BN statistics stay float32)
    # How convolutions are computed, never what: "auto" (oneDNN on the CPU where built, else XLA's pure-JAX
    # formulations; XLA's native convolution on GPU/TPU), "onednn", "decomposed" or "xla" (jaxnets.models.layers).
    # Not part of the model: a checkpoint resumes under any value.
    c.conv_lowering = "auto"
    c.sync_batch_norm = True  # BN statistics over the global batch; False: per device, averaged after the step

    # Data (jaxnets.data). None: the dataset's own value from jaxnets.data.DATASETS.
    c.dataset = "cifar10"
    c.data_dir = placeholder(str)  # None: TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    c.image_size = placeholder(int)  # None: the dataset's (32 CIFAR, 224 ImageNet, 8 digits)
    c.train_split = placeholder(str)  # None: the dataset's standard split
    c.eval_split = placeholder(str)
    # How evaluation sizes an image folder's images: "resize" the whole image (None: the default), or "centre": the
    # shorter side to image_size / 0.875 and the central square, as ImageNet's (configs/finetune_folder.py).
    c.eval_crop = placeholder(str)
    c.augment = True  # False: no augmentation at all
    # Which augmentation (jaxnets/data/augmentation.py); flip and crop None: the dataset kind's (digits: no flip).
    c.augmentation = ml_collections.ConfigDict()
    c.augmentation.flip = placeholder(bool)
    c.augmentation.crop = placeholder(str)  # "shift", "random_resized" or "none"
    c.augmentation.scale = (0.08, 1.0)  # random_resized: the crop's share of the area
    c.augmentation.color_jitter = 0.0  # brightness, contrast, saturation factors in [1 - j, 1 + j]
    c.shuffle_buffer = placeholder(int)  # None: the dataset's (50k CIFAR, 16k ImageNet)
    c.cache = placeholder(bool)  # None: cached in memory except ImageNet
    c.seed = 0
    # Sound datasets (audio_folder:/path, timbres): how a clip becomes the networks' input, and its augmentation
    # (SpecAugment, gain); jaxnets/sound/config.py has every field.
    c.audio = sound_config_section()

    # Length and batch.
    c.global_batch_size = 128  # over all devices and hosts
    c.eval_batch_size = 500
    c.num_epochs = 200  # sets the schedule's horizon
    c.num_train_steps = -1  # > 0 caps the run (smoke tests) without changing the schedule
    # Train steps per jitted call (a loop on the devices over that many batches, ending early where the loop logs,
    # evaluates or saves): the host's work per call (dispatch, transfers, reading metrics, ~1 ms) is paid once
    # for all of them. Worth it where a step takes milliseconds (small models, fast accelerators); a call holds
    # that many batches on the devices and a stop signal waits for up to ~3 calls. The same results whatever the
    # value (bit for bit on the CPU), and a checkpoint resumes under any. 1 on a CPU mesh of several devices.
    c.steps_per_dispatch = 1

    # Optimisation (jaxnets.optim).
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.nesterov = False
    c.rmsprop_decay = 0.9
    c.rmsprop_epsilon = 1e-3
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8
    c.learning_rate = 0.1  # the peak: the schedules, warm-up and restarts are relative to it
    # None: learning_rate is used as given. N: learning_rate is the rate for a batch of N images, scaled
    # linearly to global_batch_size (Goyal et al. 2017); resolved after command-line overrides.
    c.learning_rate_batch_size = placeholder(int)
    c.schedule = "cosine"
    c.warmup_epochs = 0.0
    c.min_learning_rate = 0.0
    c.lr_decay_epochs = ()  # multistep milestones
    c.lr_decay_factor = 0.1
    c.lr_decay_start_steps = 0  # staircase (ENAS): lr * rate^floor(max(step - start, 0) / every)
    c.lr_decay_every_steps = 10_000
    c.lr_decay_every_epochs = placeholder(float)  # staircase: the interval in epochs; replaces ..._every_steps
    c.lr_decay_rate = 0.1
    c.sgdr_t0_epochs = 10
    c.sgdr_t_mul = 2
    c.weight_decay = 5e-4
    # "l2_loss": weight_decay * sum(w^2) added to the loss (ENAS); "coupled": weight_decay * w added to the
    # gradient (PyTorch's SGD weight_decay); "decoupled": -lr * weight_decay * w after the optimizer (AdamW).
    c.weight_decay_mode = "l2_loss"
    c.weight_decay_exclude_bn_and_bias = False
    c.grad_clip_norm = placeholder(float)
    c.grad_clip_per_tensor = placeholder(float)
    c.label_smoothing = 0.0
    c.ema_decay = placeholder(float)  # parameter EMA used for eval, e.g. 0.9999
    # 0: the first step with a non-finite loss, gradient norm or parameter norm stops the run. N > 0: such a
    # step's update is discarded (the data moves on) and only the (N+1)-th of them in a row stops the run.
    c.skip_nonfinite_steps = 0

    # Reporting.
    c.log_every_steps = 50
    c.eval_every_epochs = 1.0

    # Checkpoints (workdir/checkpoints/<step>; a run resumes from the newest good one).
    c.checkpoint_every_steps = 1000  # and at the end, and on SIGTERM/SIGINT
    c.max_to_keep = 3
    c.keep_best = False  # also keep the best checkpoint by eval top-1 in workdir/checkpoints_best
    # Start from pretrained params and BN statistics only: a workdir or step, or a PyTorch state dict of the same
    # architecture (.pth/.safetensors/.npz, torchvision's or timm's names); another class count: a fresh classifier.
    c.init_from = placeholder(str)
    # A checkpoint resumes only on the stream of batches and augmentation it was trained on (the input pipeline's
    # version, config.seed, the splits, the batch size, the augmentation); True: resume on the new one, with a warning.
    c.resume_other_data_stream = False

    return c


def resolve_config(config, device_count: int | None = None) -> ml_collections.ConfigDict:
    """The config a run uses: the task's values derived, dataset defaults filled in, every field checked.

    Returns a new, locked ConfigDict; `config` is not changed. Resolving a resolved config changes nothing
    (a checkpoint's saved config resolves to itself). Raises ConfigError naming the first bad field.
    `device_count` (default: every device) is what the batch sizes must divide.
    """
    missing = sorted(set(engine_config().keys()) - set(config.keys()))
    if missing:
        raise ConfigError(f"config: missing field(s) {', '.join(missing)}: start the recipe from "
                          "jaxnets.config.base_config()")
    if config.task is None:
        raise ConfigError("config.task: no task; start the recipe from jaxnets.config.base_config(task)")
    task = get_task(config.task)
    if task.config_section is not None and not isinstance(config.get(task.name), ml_collections.ConfigDict):
        raise ConfigError(f"config.{task.name}: missing, the {task.name!r} task's section: start the recipe "
                          f"from jaxnets.config.base_config({task.name!r})")
    _check_types(config)
    resolved = config.copy_and_resolve_references()
    with resolved.unlocked():
        if task.prepare is not None:
            task.prepare(resolved)
        try:
            data = check_data_config(resolved)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for field in ("image_size", "train_split", "eval_split", "eval_crop", "shuffle_buffer", "cache"):
            resolved[field] = getattr(data, field)
        _scale_learning_rate(resolved)
    device_count = jax.device_count() if device_count is None else device_count
    check_config(resolved, device_count)
    if task.check is not None:
        task.check(resolved, device_count)
    resolved.lock()
    return resolved


_KINDS = {bool: "True or False", int: "an int", float: "a number", str: "a string", tuple: "a tuple",
          ml_collections.ConfigDict: "a section of fields"}


def _is_kind(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return is_int(value)
    if kind is float:
        return is_real(value)
    if kind is tuple:
        return isinstance(value, (tuple, list))
    if kind is ml_collections.ConfigDict:
        return isinstance(value, (ml_collections.ConfigDict, dict))
    return isinstance(value, kind)


# Engine fields whose default is not None but which take None (the sections' own meaning of None).
_NULLABLE = {f"audio.{name}" for name in SOUND_NULLABLE}
# Sections whose fields are not the engine's: the model's own (checked by building the model).
_FREE_SECTIONS = {"model_overrides"}


def _check_types(config, defaults=None, prefix: str = "") -> None:
    """Each engine field holds its default's kind (sections: their fields, in turn), None only where its default is
    None: another kind (None set over a number, a string for a flag, NaN) would fail later as a TypeError far from
    the field, or not at all. The task's section is the task's to check."""
    defaults = engine_config() if defaults is None else defaults
    for name in defaults.keys():
        if name not in config:
            continue  # (a section's missing field takes its default; a missing engine field was named before)
        value, default, kind = config[name], defaults[name], defaults.get_type(name)
        if value is None and (default is None or f"{prefix}{name}" in _NULLABLE):
            continue
        none = " or None" if default is None else ""
        if kind in _KINDS and not _is_kind(value, kind):
            shown = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
            raise ConfigError(f"config.{prefix}{name}: expected {_KINDS[kind]}{none}, got {shown!r}")
        if kind is ml_collections.ConfigDict and name not in _FREE_SECTIONS:
            _check_types(value, default, f"{prefix}{name}.")


def _scale_learning_rate(config) -> None:
    reference = config.learning_rate_batch_size
    if reference is None:
        return
    if isinstance(reference, bool) or not isinstance(reference, int) or reference <= 0:
        raise ConfigError(f"config.learning_rate_batch_size must be None or a positive int, got {reference!r}")
    batch = config.global_batch_size
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ConfigError(f"config.global_batch_size must be a positive int, got {batch!r}")
    if reference != batch:
        # Stored as "learning_rate for global_batch_size images", so resolving again changes nothing.
        config.learning_rate = config.learning_rate * batch / reference
        config.learning_rate_batch_size = batch

"""Every field a run reads, with its default. Recipes in configs/ start from `base_config()`.

Fields are flat so any of them overrides from the command line (`--config.learning_rate=0.05`); the
model's own fields go in `model_overrides` (`--config.model_overrides.width_multiplier=0.5`).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Model: a registry name plus any of its fields.
    c.model = "resnext29_8x64d"
    c.model_overrides = ml_collections.ConfigDict()
    c.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (parameters and BN statistics stay float32)
    c.sync_batch_norm = True  # BN statistics over the global batch; False: per device, averaged after the step

    # Data (jaxnets.data).
    c.dataset = "cifar10"
    c.data_dir = placeholder(str)  # None: TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    c.image_size = 32
    c.train_split = placeholder(str)  # None: the dataset's standard split
    c.eval_split = placeholder(str)
    c.augment = True
    c.shuffle_buffer = placeholder(int)  # None: the dataset's default (50k CIFAR, 16k ImageNet)
    c.cache = placeholder(bool)  # None: cached in memory except ImageNet
    c.seed = 0

    # Length and batch.
    c.global_batch_size = 128  # over all devices and hosts
    c.eval_batch_size = 500
    c.num_epochs = 200  # sets the schedule's horizon
    c.num_train_steps = -1  # > 0 caps the run (smoke tests) without changing the schedule

    # Optimisation (jaxnets.optim).
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.nesterov = False
    c.rmsprop_decay = 0.9
    c.rmsprop_epsilon = 1e-3
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8
    c.learning_rate = 0.1
    c.schedule = "cosine"
    c.warmup_epochs = 0.0
    c.min_learning_rate = 0.0
    c.lr_decay_epochs = ()
    c.lr_decay_factor = 0.1
    c.lr_decay_start_steps = 0
    c.lr_decay_every_steps = 10_000
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
    c.init_from = placeholder(str)  # a workdir or step: start from its params and batch_stats only
    return c

"""Quickstart: a small ResNeXt on the bundled 8x8 handwritten digits, CPU, a few minutes.

    python train.py --config configs/quickstart.py --workdir /tmp/jaxnets-quickstart

Offline: the dataset ships inside the package. Expected: >= 97% test top-1 in well under a minute
on a 2-core CPU (tests/test_checkpoint.py holds a 12-epoch run to it through 3 SIGKILLs).
"""

from jaxnets.config import base_config


def get_config():
    c = base_config()
    c.model = "resnext29_8x64d"
    # One block per stage at a quarter of the width: 16/32/64 planes, 4 groups of 4 channels.
    c.model_overrides.stage_sizes = (1, 1, 1)
    c.model_overrides.stage_planes = (16, 32, 64)
    c.model_overrides.groups = 4
    c.model_overrides.width_per_group = 16
    c.dataset = "digits"
    c.global_batch_size = 64
    c.eval_batch_size = 64
    c.num_epochs = 40
    c.optimizer = "sgd"
    c.nesterov = True
    c.learning_rate = 0.1
    c.schedule = "cosine"
    c.warmup_epochs = 1.0
    c.weight_decay = 5e-4
    c.steps_per_dispatch = 10  # a step is ~8 ms here: one call per 10 steps leaves the host's work out of the way
    c.log_every_steps = 100
    c.eval_every_epochs = 10.0
    # With each evaluation (10 epochs of 21 steps, ~2 s here). A save costs ~0.1 s of these 2 cores (orbax writes
    # 103 small arrays, ~1 ms each): every 100 steps, saves took 17% of the loop's speed (benchmarks/loop_overhead.py).
    c.checkpoint_every_steps = 210
    return c

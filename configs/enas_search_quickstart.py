"""Quickstart ENAS search: the macro search space on the bundled 8x8 digits, minutes on a 2-core CPU.

    python train.py --config configs/enas_search_quickstart.py --workdir /tmp/jaxnets-enas-search
    python train.py --config /tmp/jaxnets-enas-search/final_config.py --workdir /tmp/jaxnets-enas-final

The released search's algorithm (configs/enas_macro_search.py) at a size that fits the digits and the CPU:
6 layers of 16 filters (6 ops each), fewer controller updates per epoch. The search trains on the first
90% of the digits' training split and takes its rewards on the last 10%; the found arc is then trained
from scratch on the whole training split and tested on the test split (the `search.final` block below).
docs/enas.md gives its curves, time and the comparison with random arcs (benchmarks/enas_search_quickstart.py).
"""

import ml_collections

from jaxnets.config import base_config


def get_config():
    c = base_config("search")
    c.model = "enas_macro_shared"
    c.model_overrides.num_layers = 6
    c.model_overrides.num_filters = 16
    c.dataset = "digits"
    c.global_batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 100
    c.optimizer = "sgd"
    c.nesterov = True
    c.learning_rate = 0.05
    c.schedule = "cosine"
    c.weight_decay = 2.5e-4
    c.weight_decay_mode = "l2_loss"
    c.grad_clip_per_tensor = 5.0
    c.log_every_steps = 500
    c.eval_every_epochs = 10.0
    c.checkpoint_every_steps = 500

    c.search.controller_updates_per_epoch = 10
    c.search.controller_arcs_per_update = 10
    c.search.controller_batch_size = 32
    c.search.eval_arcs = 10
    c.search.final_arcs = 20

    # Training the found arc from scratch: the quickstart's settings (configs/quickstart.py).
    c.search.final = ml_collections.ConfigDict(dict(
        global_batch_size=64, eval_batch_size=64, num_epochs=40, optimizer="sgd", nesterov=True, learning_rate=0.1,
        schedule="cosine", warmup_epochs=1.0, weight_decay=5e-4, weight_decay_mode="l2_loss",
        log_every_steps=100, eval_every_epochs=10.0, checkpoint_every_steps=100,
        model_overrides=dict(keep_prob=0.9),
    ))
    return c
